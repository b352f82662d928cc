package device

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"image"
	"image/png"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	rhelper "github.com/ibcm-project/ibcm/remote/helper"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Screen sessions with real peers: Xvfb for the sharer's display, the agent's x11vnc, and
// on the helper's side gvnccapture (gvncviewer) or an RFB client of the test through the
// helper's local VNC port.

const testW, testH = 320, 240

// startX starts Xvfb on a free display (the sharer's X session) and returns it.
func startX(t *testing.T) string {
	t.Helper()
	xvfb := peertest.Need(t, "Xvfb")
	peertest.Need(t, "x11vnc")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() }) // open while Xvfb runs: it fails on a closed pipe
	cmd := exec.Command(xvfb, "-displayfd", "3", "-screen", "0", fmt.Sprintf("%dx%dx24", testW, testH), "-nolisten", "tcp", "-noreset")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var xlog bytes.Buffer
	cmd.Stderr = &xlog
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Xvfb: %s", xlog.Bytes())
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	d, err := readDisplayFD(r) // written once the display accepts clients
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strconv.Atoi(d); err != nil {
		t.Fatalf("Xvfb: displayfd %q", d)
	}
	return ":" + d
}

// drawPattern tiles the root window with an 8×8 bitmap, red on blue, and returns the
// colour each pixel must have.
func drawPattern(t *testing.T, display string) func(x, y int) [3]byte {
	t.Helper()
	rows := []byte{0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff} // a staircase
	var xbm bytes.Buffer
	fmt.Fprintf(&xbm, "#define p_width 8\n#define p_height 8\nstatic unsigned char p_bits[] = {\n")
	for i, r := range rows {
		if i > 0 {
			xbm.WriteString(", ")
		}
		fmt.Fprintf(&xbm, "0x%02x", r)
	}
	xbm.WriteString("};\n")
	f := filepath.Join(t.TempDir(), "p.xbm")
	if err := os.WriteFile(f, xbm.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(peertest.Need(t, "xsetroot"), "-display", display, "-bitmap", f, "-fg", "#ff0000", "-bg", "#0000ff").CombinedOutput()
	if err != nil {
		t.Fatalf("xsetroot: %v %s", err, out)
	}
	// The pointer to the origin: x11vnc draws its arrow into the frames of a viewer without
	// the cursor pseudo-encoding (gvnccapture), at the pointer or, before it has seen the
	// pointer, at the origin; those pixels are not the display's.
	cmd := exec.Command(peertest.Need(t, "xdotool"), "mousemove", "0", "0")
	cmd.Env = append(os.Environ(), "DISPLAY="+display)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xdotool: %v %s", err, out)
	}
	return func(x, y int) [3]byte {
		if rows[y%8]>>(x%8)&1 == 1 { // XBM: least significant bit leftmost
			return [3]byte{255, 0, 0}
		}
		return [3]byte{0, 0, 255}
	}
}

// offerDisplay connects a share-socket client of the test's user that offers display, as
// `ibcm-client share --screen` does.
func offerDisplay(t *testing.T, e *env, display string) net.Conn {
	t.Helper()
	c := offerDisplayConn(t, e, display)
	go io.Copy(io.Discard, c)
	return c
}

// offerDisplayConn is offerDisplay leaving the agent's frames to the caller.
func offerDisplayConn(t *testing.T, e *env, display string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := frame.WriteJSON(c, frame.Hello, frame.Greeting{Terminal: KindWatch, Display: display}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.host.hub.present() < 0 && time.Now().Before(deadline) { // the hub has no event for a watcher's arrival here
		time.Sleep(5 * time.Millisecond)
	}
	return c
}

type screenSession struct {
	s      *rhelper.Session
	port   *rhelper.ScreenPort
	served chan error
	events chan rhelper.Event
	tk     ticket.Ticket
}

// startScreen requests a screen session in mode and opens the helper's VNC port for it.
func startScreen(t *testing.T, e *env, mode string, modes ...string) *screenSession {
	t.Helper()
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Card: ticket.Card{User: "alice"}, Role: ticket.RoleHelper, Mode: mode, Modes: modes, Kind: ticket.KindScreen, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	return openScreen(t, e, e.alice, tk)
}

// openScreen sends the ticket tk to the device and opens the helper's end of its leg as
// cert, with the helper's VNC port.
func openScreen(t *testing.T, e *env, cert tls.Certificate, tk ticket.Ticket) *screenSession {
	t.Helper()
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	_ = e.relay.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
	c, err := e.relay.Accept()
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, e2e.HelperConfig(cert, e.pki.roots, deviceID, nil, nil))
	t.Cleanup(func() { tc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := rhelper.Open(ctx, tc, frame.Greeting{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Device.Terminal != TerminalScreen {
		t.Fatalf("device greeting %+v", s.Device)
	}
	port, err := rhelper.ListenScreen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ss := &screenSession{s: s, port: port, served: make(chan error, 1), events: make(chan rhelper.Event, 16), tk: tk}
	go func() { ss.served <- port.Serve(context.Background(), s, func(ev rhelper.Event) { ss.events <- ev }) }()
	return ss
}

// capture takes a frame through the helper's port with gvnccapture, which reads the
// password from its terminal: a PTY here.
func capture(t *testing.T, ss *screenSession) image.Image {
	t.Helper()
	bin := peertest.Need(t, "gvnccapture")
	out := filepath.Join(t.TempDir(), "frame.png")
	cmd := exec.Command(bin, fmt.Sprintf("127.0.0.1:%d", ss.port.Addr().Port-5900), out)
	tty, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	msgs := &syncBuffer{}
	done := make(chan struct{})
	go func() { io.Copy(msgs, tty); close(done) }()
	waitText(t, msgs, "Password:")
	n, err := unix.IoctlGetInt(int(tty.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	waitEchoOff(t, fmt.Sprintf("/dev/pts/%d", n))
	if _, err := io.WriteString(tty, ss.port.Password+"\n"); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	err = cmd.Wait()
	<-done
	if err != nil {
		t.Fatalf("gvnccapture: %v\n%s", err, msgs.String())
	}
	f, err := os.Open(out)
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

func TestScreenCaptureMatchesDisplay(t *testing.T) {
	display := startX(t)
	want := drawPattern(t, display)
	rc := defaultRC()
	rc.PromptUser = false
	e := newEnv(t, rc)
	e.host.c.ScreenDir = t.TempDir()
	offerDisplay(t, e, display)
	ss := startScreen(t, e, ticket.ModeView, ticket.ModeView)
	img := capture(t, ss)
	if b := img.Bounds(); b.Dx() != testW || b.Dy() != testH {
		t.Fatalf("frame of %v, want %dx%d", b, testW, testH)
	}
	arrow := image.Rect(0, 0, 16, 24)
	bad := 0
	var box image.Rectangle
	for y := 0; y < testH; y++ {
		for x := 0; x < testW; x++ {
			if image.Pt(x, y).In(arrow) {
				continue
			}
			r, g, b, _ := img.At(x, y).RGBA()
			if got := [3]byte{byte(r >> 8), byte(g >> 8), byte(b >> 8)}; got != want(x, y) {
				box = box.Union(image.Rect(x, y, x+1, y+1))
				if bad++; bad < 5 {
					t.Errorf("pixel %d,%d is %v, want %v", x, y, got, want(x, y))
				}
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d pixels differ from the display, in %v", bad, box)
	}
	// The port took its one connection; the viewer left, the helper ends the session.
	if err := <-ss.served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if c, err := net.Dial("tcp", ss.port.Addr().String()); err == nil {
		c.Close()
		t.Error("the port took a second connection")
	}
	ss.s.End("done")
	if r := e.rep.wait(t, wire.ReportEnded); r.Outcome != wire.OutcomeCompleted || r.BytesOut == 0 || r.BytesIn == 0 {
		t.Errorf("ended %+v", r)
	}
	// The helper still reads the device's frames after its viewer left: the End arrives.
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case ev := <-ss.events:
			done = ev.Type == frame.End
		case <-timeout:
			t.Fatal("the device's End did not reach the helper")
		}
	}
	waitNoScreenDir(t, e.host.c.ScreenDir)
}

// waitNoScreenDir waits until the session's private directory is gone: x11vnc stopped.
func waitNoScreenDir(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(dir)
		if len(ents) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the screen directory is still there: %v", ents)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestScreenWrongPassword(t *testing.T) {
	display := startX(t)
	rc := defaultRC()
	rc.PromptUser = false
	e := newEnv(t, rc)
	offerDisplay(t, e, display)
	ss := startScreen(t, e, ticket.ModeView, ticket.ModeView)
	c, err := net.Dial("tcp", ss.port.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = rfb.Dial(c, "wrong!!!")
	if err == nil || !strings.Contains(err.Error(), "wrong password") {
		t.Fatalf("a wrong password: %v", err)
	}
	if err := <-ss.served; err == nil || !strings.Contains(err.Error(), rfb.ErrAuth.Error()) {
		t.Fatalf("serve: %v", err)
	}
}

// viewer is the test's RFB client through the helper's port: it sends input and reads raw
// frames (32-bit true colour).
type rfbViewer struct {
	t    *testing.T
	c    net.Conn
	w, h int
}

func dialViewer(t *testing.T, ss *screenSession) *rfbViewer {
	t.Helper()
	c, err := net.Dial("tcp", ss.port.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	si, err := rfb.Dial(c, ss.port.Password)
	if err != nil {
		t.Fatal(err)
	}
	w, h := si.Size()
	v := &rfbViewer{t: t, c: c, w: int(w), h: int(h)}
	pf := []byte{0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0}
	v.send(pf)
	v.send([]byte{2, 0, 0, 1, 0, 0, 0, 0}) // Raw only
	return v
}

func (v *rfbViewer) send(p []byte) {
	v.t.Helper()
	if _, err := v.c.Write(p); err != nil {
		v.t.Fatal(err)
	}
}

func (v *rfbViewer) key(sym uint32) {
	for _, down := range []byte{1, 0} {
		m := []byte{4, down, 0, 0}
		v.send(binary.BigEndian.AppendUint32(m, sym))
	}
}

func (v *rfbViewer) click(x, y uint16) {
	for _, b := range []byte{1, 0} {
		m := binary.BigEndian.AppendUint16([]byte{5, b}, x)
		v.send(binary.BigEndian.AppendUint16(m, y))
	}
}

// frame asks for the whole screen and reads it.
func (v *rfbViewer) frame() []byte {
	v.t.Helper()
	req := []byte{3, 0, 0, 0, 0, 0}
	req = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(req, uint16(v.w)), uint16(v.h))
	v.send(req)
	fb := make([]byte, v.w*v.h*4)
	covered := 0
	r := v.c
	for covered < v.w*v.h {
		var t [1]byte
		if _, err := io.ReadFull(r, t[:]); err != nil {
			v.t.Fatal(err)
		}
		switch t[0] {
		case 0: // FramebufferUpdate
			var h [3]byte
			io.ReadFull(r, h[:])
			for n := binary.BigEndian.Uint16(h[1:]); n > 0; n-- {
				var rh [12]byte
				if _, err := io.ReadFull(r, rh[:]); err != nil {
					v.t.Fatal(err)
				}
				x, y := int(binary.BigEndian.Uint16(rh[0:])), int(binary.BigEndian.Uint16(rh[2:]))
				w, hh := int(binary.BigEndian.Uint16(rh[4:])), int(binary.BigEndian.Uint16(rh[6:]))
				if enc := int32(binary.BigEndian.Uint32(rh[8:])); enc != 0 {
					v.t.Fatalf("encoding %d, want raw", enc)
				}
				row := make([]byte, w*4)
				for j := 0; j < hh; j++ {
					if _, err := io.ReadFull(r, row); err != nil {
						v.t.Fatal(err)
					}
					copy(fb[((y+j)*v.w+x)*4:], row)
				}
				covered += w * hh
			}
		case 2: // Bell
		case 3: // ServerCutText
			var h [7]byte
			io.ReadFull(r, h[:])
			io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint32(h[3:])))
		default:
			v.t.Fatalf("server message %d", t[0])
		}
	}
	return fb
}

// TestScreenViewDropsInputControlPasses types into an xterm on the sharer's display: in
// view mode the keys and clicks are dropped, in control mode they arrive. The xterm runs a
// shell that reads one line into a file: the file says which keys arrived, in order.
func TestScreenViewDropsInputControlPasses(t *testing.T) {
	display := startX(t)
	xterm := peertest.Need(t, "xterm")
	out := filepath.Join(t.TempDir(), "line")
	cmd := exec.Command(xterm, "-display", display, "-geometry", "60x20+0+0", "-e", "sh", "-c", `read x; printf %s "$x" > "$0"; sleep 60`, out)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// The xterm's window is up (xdotool waits for it) and under the pointer (focus).
	xdo := peertest.Need(t, "xdotool")
	t.Setenv("DISPLAY", display)
	if b, err := exec.Command(xdo, "search", "--sync", "--onlyvisible", "--class", "xterm").CombinedOutput(); err != nil {
		t.Fatalf("xdotool search: %v %s", err, b)
	}
	if b, err := exec.Command(xdo, "mousemove", "40", "40").CombinedOutput(); err != nil {
		t.Fatalf("xdotool: %v %s", err, b)
	}

	rc := defaultRC()
	rc.PromptUser = false
	e := newEnv(t, rc)
	offerDisplay(t, e, display)
	ss := startScreen(t, e, ticket.ModeView, ticket.ModeView, ticket.ModeControl)
	v := dialViewer(t, ss)
	before := v.frame()
	v.key('v')
	v.click(100, 100)
	v.key(0xff0d) // Return
	after := v.frame()
	if !bytes.Equal(before, after) {
		t.Error("the display changed in view mode")
	}
	if err := ss.s.RequestMode(ticket.ModeControl); err != nil {
		t.Fatal(err)
	}
	for ev := range ss.events {
		if ev.Type == frame.Mode {
			if !ev.Mode.Granted || ev.Mode.Mode != ticket.ModeControl {
				t.Fatalf("control: %+v", ev.Mode)
			}
			break
		}
	}
	v.key('c')
	v.key(0xff0d)
	deadline := time.Now().Add(15 * time.Second)
	var line []byte
	for {
		var err error
		if line, err = os.ReadFile(out); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the control-mode keys did not reach the xterm")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if string(line) != "c" {
		t.Fatalf("the xterm read %q, want \"c\": keys typed in view mode arrived", line)
	}
	// x11vnc polls the display: its copy catches up with the xterm's echo.
	deadline = time.Now().Add(15 * time.Second)
	for bytes.Equal(v.frame(), before) {
		if time.Now().After(deadline) {
			t.Fatal("the display did not change in control mode")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Unattended, nobody present: the agent starts Xvfb on a fresh display with a cookie of
// its own, and x11vnc on it; a message the filter does not allow ends the session.
func TestScreenUnattendedXvfbAndForbiddenMessage(t *testing.T) {
	peertest.Need(t, "Xvfb")
	peertest.Need(t, "x11vnc")
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser = true, false
	e := newEnv(t, rc)
	e.host.c.ScreenDir = traversableDir(t)
	ss := startScreen(t, e, ticket.ModeUnattended, ticket.ModeView, ticket.ModeUnattended)
	v := dialViewer(t, ss)
	if g := strings.SplitN(ScreenGeometry, "x", 3); v.w != atoi(t, g[0]) || v.h != atoi(t, g[1]) {
		t.Fatalf("screen of %dx%d, want %s", v.w, v.h, ScreenGeometry)
	}
	if fb := v.frame(); len(fb) != v.w*v.h*4 {
		t.Fatal("no frame")
	}
	// The session's private directory: 0700.
	ents, _ := os.ReadDir(e.host.c.ScreenDir)
	if len(ents) != 1 {
		t.Fatalf("screen directories %v", ents)
	}
	dir := filepath.Join(e.host.c.ScreenDir, ents[0].Name())
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the screen directory: %v %v", fi.Mode(), err)
	}
	// Run by root, the agent starts both servers as a uid of the session's own: in the
	// dynamic range, no account's, and nothing runs as it once the session is over.
	uid := -1
	if os.Geteuid() == 0 {
		procs := processesWith(t, dir)
		if len(procs) < 2 {
			t.Fatalf("found %d processes of the screen (want Xvfb and x11vnc)", len(procs))
		}
		for pid, u := range procs {
			if uid == -1 {
				uid = u
			}
			if u != uid || u < dynamicUIDFirst || u > dynamicUIDLast {
				t.Errorf("process %d of the unattended screen runs as uid %d (others %d), want one uid in %d–%d", pid, u, uid, dynamicUIDFirst, dynamicUIDLast)
			}
		}
		if _, err := user.LookupId(strconv.Itoa(uid)); err == nil {
			t.Errorf("uid %d of the screen is an account's", uid)
		}
		if fi, err := os.Stat(dir); err == nil && fi.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
			t.Errorf("the screen directory belongs to uid %d, not the session's %d", fi.Sys().(*syscall.Stat_t).Uid, uid)
		}
	}
	v.send([]byte{250, 0, 1, 2}) // xvp: not allowed in any mode
	if r := e.rep.wait(t, wire.ReportEnded); r.Outcome != wire.OutcomeFailed || !strings.Contains(r.Message, "xvp") {
		t.Errorf("ended %+v", r)
	}
	waitNoScreenDir(t, e.host.c.ScreenDir)
	if uid >= 0 {
		running, err := processUIDs()
		if err != nil {
			t.Fatal(err)
		}
		if running[uid] {
			t.Errorf("a process of uid %d still runs after the session", uid)
		}
	}
}

// Two unattended screens at once never share a uid, and a uid given back is free again.
func TestDynamicScreenUIDs(t *testing.T) {
	a, relA, err := DynamicScreenUID()
	if err != nil {
		t.Fatal(err)
	}
	b, relB, err := DynamicScreenUID()
	if err != nil {
		t.Fatal(err)
	}
	defer relB()
	if a == b || a < dynamicUIDFirst || b > dynamicUIDLast || b < dynamicUIDFirst || a > dynamicUIDLast {
		t.Fatalf("uids %d and %d", a, b)
	}
	relA()
	dynamicUIDs.Lock()
	taken := dynamicUIDs.taken[a]
	dynamicUIDs.Unlock()
	if taken {
		t.Errorf("uid %d still taken after its release", a)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The sharer's client that offered the display leaves: the session ends, x11vnc stops.
func TestScreenEndsWhenSharerLeaves(t *testing.T) {
	display := startX(t)
	rc := defaultRC()
	rc.PromptUser = false
	e := newEnv(t, rc)
	e.host.c.ScreenDir = t.TempDir()
	c := offerDisplay(t, e, display)
	ss := startScreen(t, e, ticket.ModeView, ticket.ModeView)
	v := dialViewer(t, ss)
	v.frame()
	c.Close()
	if r := e.rep.wait(t, wire.ReportEnded); r.Outcome != wire.OutcomeCompleted || !strings.Contains(r.Message, "offered the display") {
		t.Errorf("ended %+v", r)
	}
	waitNoScreenDir(t, e.host.c.ScreenDir)
}

// Without a display offered (plain share or consent --watch), an attended screen session is refused.
func TestScreenNeedsADisplay(t *testing.T) {
	rc := defaultRC()
	rc.PromptUser = false
	e := newEnv(t, rc)
	_, _, _ = e.watch(t)
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Card: ticket.Card{User: "alice"}, Role: ticket.RoleHelper, Mode: ticket.ModeView, Modes: []string{ticket.ModeView}, Kind: ticket.KindScreen, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeNoDisplay {
		t.Errorf("refused %+v", r)
	}
}

// x11vnc listens on its Unix socket only: none of its sockets is a TCP listener.
func TestStartScreenListensOnNoTCPPort(t *testing.T) {
	display := startX(t)
	sc, err := StartScreen(context.Background(), ScreenSpec{Display: display, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if w, h := sc.Init.Size(); w != testW || h != testH {
		t.Fatalf("ServerInit of %dx%d", w, h)
	}
	pid := sc.procs[0].Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	if len(inodes) == 0 {
		t.Fatal("x11vnc has no sockets")
	}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 9 && f[3] == "0A" && inodes[f[9]] { // 0A: LISTEN
				t.Errorf("x11vnc listens on TCP %s (%s)", f[1], table)
			}
		}
	}
}

// Under systemd the agent starts an attended session's x11vnc with systemd-run, as the
// sharer, and stops its unit at the end (stand-ins for systemd-run and systemctl that run
// the command and record their arguments).
func TestScreenUnderSystemd(t *testing.T) {
	display := startX(t)
	dir := t.TempDir()
	runArgs, ctlArgs := filepath.Join(dir, "run.args"), filepath.Join(dir, "ctl.args")
	run := filepath.Join(dir, "systemd-run")
	ctl := filepath.Join(dir, "systemctl")
	if err := os.WriteFile(run, []byte(`#!/bin/sh
echo "$@" > `+runArgs+`
while [ "$1" != "--" ]; do
	if [ "$1" = "-E" ]; then shift; export "$1"; fi
	shift
done
shift
exec "$@"
`), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ctl, []byte("#!/bin/sh\necho \"$@\" >> "+ctlArgs+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	rc := defaultRC()
	rc.PromptUser = false
	e := newEnv(t, rc)
	e.host.c.ScreenDir = t.TempDir()
	e.host.c.ScreenSystemd = &SystemdShells{Run: run, Ctl: ctl}
	offerDisplay(t, e, display)
	ss := startScreen(t, e, ticket.ModeView, ticket.ModeView)
	v := dialViewer(t, ss)
	if fb := v.frame(); len(fb) != testW*testH*4 {
		t.Fatal("no frame")
	}
	ss.s.End("done")
	e.rep.wait(t, wire.ReportEnded)
	waitNoScreenDir(t, e.host.c.ScreenDir)
	unit := "ibcm-" + ss.tk.Session[:12] + "-screen.service"
	b, _ := os.ReadFile(runArgs)
	for _, want := range []string{"--unit " + unit, "--uid 0 --gid 0", "-E HOME=", "-- /", "x11vnc -display " + display + " -unixsock "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("systemd-run %s: no %q", b, want)
		}
	}
	if b, _ := os.ReadFile(ctlArgs); strings.TrimSpace(string(b)) != "stop "+unit {
		t.Errorf("systemctl %q", b)
	}
}

// With prompt_clipboard, the viewer's clipboard text reaches the device's clipboard only
// once the sharer accepts it; a denied one does not.
func TestScreenClipboardAsksTheSharer(t *testing.T) {
	display := startX(t)
	xprop := peertest.Need(t, "xprop")
	rc := defaultRC()
	rc.PromptUser, rc.PromptClipboard = false, true
	e := newEnv(t, rc)
	c := offerDisplayConn(t, e, display)
	answers := []bool{true, false}
	prompts := make(chan frame.ConsentPrompt, 4)
	go func() { // the sharer: accepts the first paste, denies the second
		r := frame.NewReader(c)
		for {
			f, err := r.Next()
			if err != nil {
				return
			}
			if f.Type != frame.Prompt {
				continue
			}
			var p frame.ConsentPrompt
			if frame.DecodeJSON(f, &p) != nil || len(answers) == 0 {
				return
			}
			prompts <- p
			_ = frame.WriteJSON(c, frame.Answer, frame.ConsentAnswer{ID: p.ID, Accept: answers[0]})
			answers = answers[1:]
		}
	}()
	ss := startScreen(t, e, ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	v := dialViewer(t, ss)
	cut := func(text string) {
		v.send(append(binary.BigEndian.AppendUint32([]byte{6, 0, 0, 0}, uint32(len(text))), text...))
	}
	clipboard := func() string { // x11vnc puts the viewer's text in the cut buffer
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, xprop, "-display", display, "-root", "CUT_BUFFER0").Output()
		return strings.TrimSpace(string(out))
	}
	const accepted = `CUT_BUFFER0(STRING) = "hello-clip"`
	cut("hello-clip")
	if p := <-prompts; p.Kind != KindClipboard || p.Reason != "10 bytes of text" || p.Helper.User != "alice" {
		t.Fatalf("prompt %+v", p)
	}
	waitFor(t, "the accepted text on the device's clipboard", func() bool { return clipboard() == accepted })
	cut("denied-text")
	<-prompts
	for ev := range ss.events {
		if ev.Type == frame.Status && strings.Contains(ev.Presence.Message, "not accepted (denied)") {
			break
		}
	}
	if got := clipboard(); got != accepted {
		t.Fatalf("the clipboard holds %q after a denied paste", got)
	}
}

// traversableDir is a temporary directory other accounts can pass through (0711), as the
// agent's screen directory is: an unattended screen's servers run as nobody.
func traversableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ibcm-screen-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// processesWith returns the pid and real uid of every process whose command line names
// something under dir.
func processesWith(t *testing.T, dir string) map[int]int {
	t.Helper()
	out := map[int]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmd), dir) {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				out[pid] = atoi(t, f[1])
			}
		}
	}
	return out
}

// waitEchoOff waits until the terminal at path has echo off. gvnccapture prints its
// "Password:" prompt first and then turns echo off with TCSAFLUSH, which drops what was
// typed in between: the prompt alone is not the signal that it reads (a busy machine lost
// the password that way and gvnccapture waited for it until killed).
func waitEchoOff(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	waitFor(t, "echo off on "+path, func() bool {
		tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		return err == nil && tio.Lflag&unix.ECHO == 0
	})
}
