package integration

import (
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestRemoteScreenSession: a device on the internet whose user offers their X display with
// `ibcm-client share --screen`, a helper with `ibcm remote start --screen --mode view`; the
// sharer consents to a screen session, the helper's local VNC port takes gvnccapture with
// the printed one-time password, and the frame it takes is the display's; the helper ends
// the session and the audit has it. Meanwhile a second helper joins it with `ibcm remote
// join` after the sharer's consent: a local VNC port of their own, whose frame
// (gvnccapture) is the display's too; their leaving keeps the session.
func TestRemoteScreenSession(t *testing.T) {
	for _, tool := range []string{"Xvfb", "x11vnc", "gvnccapture", "xsetroot"} {
		needTool(t, tool)
	}
	display := startXvfb(t)
	// A solid colour: x11vnc draws its own arrow where the pointer is, so the test counts
	// the pixels of the colour rather than wanting every one.
	if out, err := exec.Command("xsetroot", "-display", display, "-solid", "#20c040").CombinedOutput(); err != nil {
		t.Fatalf("xsetroot: %v %s", err, out)
	}

	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-scr1")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, blackHole(t))
	sock, _ := startSharingAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent's notification channel", func() bool { return statusOf(t, dev).Notify })
	id := deviceIDOf(t, dev)
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)

	tm := newTerminals(t)
	tm.open("sharer", []string{"DISPLAY=" + display}, bin.client+" share --screen --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)

	tm.open("helper", helen.env, bin.ibcm+" remote start pc-scr1 --screen --mode view --reason 'screen check'")
	tm.waitFor("sharer", "allow screen view access for Helen Desk", 10*time.Second)
	tm.keys("sharer", "C-]", "y")
	sc := tm.waitFor("helper", "one-time password", 20*time.Second)
	m := regexp.MustCompile(`127\.0\.0\.1:(\d+) \(display (\d+)\), one-time password ([a-z0-9]{8})`).FindStringSubmatch(sc)
	if m == nil {
		t.Fatalf("no VNC port and password on the helper's terminal:\n%s", sc)
	}
	act := s.session(t, id, "the screen session active", func(x wire.Session) bool { return x.State == wire.SessionActive && x.E2E })
	if act.Kind != "screen" {
		t.Errorf("the session's kind %q", act.Kind)
	}

	// A second helper joins as a viewer, once the sharer accepts.
	victor := addHelper(t, s, "victor", "Help Desk Operator", "Victor View", s.mpInternet)
	tm.open("joiner", victor.env, bin.ibcm+" remote join "+act.ID)
	tm.waitFor("sharer", "allow screen view access for Victor View", 10*time.Second)
	tm.keys("sharer", "C-]", "y")
	js := tm.waitFor("joiner", "one-time password", 20*time.Second)
	jm := regexp.MustCompile(`127\.0\.0\.1:(\d+) \(display (\d+)\), one-time password ([a-z0-9]{8})`).FindStringSubmatch(js)
	if jm == nil || !strings.Contains(js, "as a viewer") {
		t.Fatalf("no VNC port and password on the joiner's terminal:\n%s", js)
	}
	checkGreen(t, captureScreen(t, tm, "jviewer", jm[2], jm[3]))
	// The joiner's port took its one viewer, which closed: the joiner leaves, the session goes on.
	if code := tm.exited("joiner", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote join exited %d:\n%s", code, tm.screen("joiner"))
	}
	var shown wire.Session
	if err := json.Unmarshal([]byte(s.ibcm(t, "remote", "show", "--json", act.ID)), &shown); err != nil {
		t.Fatal(err)
	}
	if shown.State != wire.SessionActive || !slices.Contains(shown.Viewers, "victor") || shown.Kind != "screen" {
		t.Fatalf("after the viewer left: %+v", shown)
	}

	checkGreen(t, captureScreen(t, tm, "viewer", m[2], m[3]))

	// The port took its one viewer; the helper's command ends the session on q.
	tm.text("helper", "q")
	tm.keys("helper", "Enter")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote start --screen exited %d:\n%s", code, tm.screen("helper"))
	}
	done := s.session(t, id, "the screen session completed", func(x wire.Session) bool { return x.State == wire.SessionEnded })
	if done.Outcome != wire.OutcomeCompleted || done.Reason != "screen check" || !done.E2E || done.BytesOut == 0 || done.Mode != "view" {
		t.Errorf("audit of the screen session: %+v", done)
	}
}

// captureScreen takes a frame with gvnccapture (in terminal name: it reads the password
// from its terminal) from the helper's VNC port of display number display.
func captureScreen(t *testing.T, tm *terminals, name, display, password string) image.Image {
	t.Helper()
	frame := filepath.Join(t.TempDir(), "frame.png")
	tm.open(name, nil, fmt.Sprintf("gvnccapture 127.0.0.1:%s %s", display, frame))
	tm.waitFor(name, "Password:", 10*time.Second)
	// gvnccapture prints the prompt, then turns echo off with TCSAFLUSH, dropping what was
	// typed in between: the password goes in once echo is off.
	tty, err := os.OpenFile(strings.TrimSpace(tm.tmux("display-message", "-p", "-t", name, "#{pane_tty}")), os.O_RDONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gvnccapture turns echo off", func() bool {
		tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		return err == nil && tio.Lflag&unix.ECHO == 0
	})
	tty.Close()
	tm.text(name, password)
	tm.keys(name, "Enter")
	if code := tm.exited(name, 30*time.Second); code != 0 {
		t.Fatalf("gvnccapture exited %d:\n%s", code, tm.screen(name))
	}
	f, err := os.Open(frame)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// checkGreen checks that img is the 640x480 display filled with #20c040.
func checkGreen(t *testing.T, img image.Image) {
	t.Helper()
	b := img.Bounds()
	if b.Dx() != 640 || b.Dy() != 480 {
		t.Fatalf("a frame of %v, want the display's 640x480", b)
	}
	green := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if r, g, bl, _ := img.At(x, y).RGBA(); r>>8 == 0x20 && g>>8 == 0xc0 && bl>>8 == 0x40 {
				green++
			}
		}
	}
	if green < 640*480-400 { // all but the pointer's arrow
		t.Fatalf("%d pixels of the display's colour in %d", green, 640*480)
	}
}

// startXvfb starts a 640x480 Xvfb on a free display (the sharer's X session).
func startXvfb(t *testing.T) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() }) // open while Xvfb runs: it fails on a closed pipe
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-screen", "0", "640x480x24", "-nolisten", "tcp", "-noreset")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var d []byte
	one := make([]byte, 1)
	for len(d) < 8 {
		if _, err := io.ReadFull(r, one); err != nil || one[0] == '\n' {
			break
		}
		d = append(d, one[0])
	}
	if _, err := strconv.Atoi(strings.TrimSpace(string(d))); err != nil {
		t.Fatalf("Xvfb: display %q", d)
	}
	return ":" + string(d)
}
