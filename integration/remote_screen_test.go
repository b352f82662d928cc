package integration

import (
	"fmt"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestRemoteScreenSession: a device on the internet whose user offers their X display with
// `ibcm-client share --screen`, a helper with `ibcm remote start --screen --mode view`; the
// sharer consents to a screen session, the helper's local VNC port takes gvnccapture with
// the printed one-time password, and the frame it takes is the display's; the helper ends
// the session and the audit has it.
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
	s.session(t, id, "the screen session active", func(x wire.Session) bool { return x.State == wire.SessionActive && x.E2E })

	// gvnccapture reads the password from its terminal.
	frame := filepath.Join(t.TempDir(), "frame.png")
	tm.open("viewer", nil, fmt.Sprintf("gvnccapture 127.0.0.1:%s %s", m[2], frame))
	tm.waitFor("viewer", "Password:", 10*time.Second)
	tm.text("viewer", m[3])
	tm.keys("viewer", "Enter")
	if code := tm.exited("viewer", 30*time.Second); code != 0 {
		t.Fatalf("gvnccapture exited %d:\n%s", code, tm.screen("viewer"))
	}
	f, err := os.Open(frame)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
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
