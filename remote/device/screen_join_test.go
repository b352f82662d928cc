package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// viewerTicket is a second helper's (bob's) viewer ticket for session, of kind.
func viewerTicket(e *env, bob tls.Certificate, session, kind string) ticket.Ticket {
	now := time.Now()
	return ticket.Ticket{ID: ticket.NewID(), Session: session, Device: deviceID, Helper: "bob", HelperKey: wire.PublicKeyHash(bob.Leaf),
		Card: ticket.Card{User: "bob", DisplayName: "Bob"}, Role: ticket.RoleViewer, Mode: ticket.ModeView, Modes: []string{ticket.ModeView},
		Kind: kind, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
}

// waitTicket returns the first report of event for ticket id.
func waitTicket(t *testing.T, e *env, event, id string) wire.SessionReport {
	t.Helper()
	for {
		if r := e.rep.wait(t, event); r.Ticket == id {
			return r
		}
	}
}

// A second helper joins a screen session as a viewer, after the sharer's consent: a
// connection of its own to the session's x11vnc shows the display; its keys, clicks and
// clipboard never arrive, while the main helper in control mode types into an xterm on
// the display. The viewer leaving keeps the session; the session ending ends a viewer.
func TestScreenViewerJoins(t *testing.T) {
	display := startX(t)
	want := drawPattern(t, display)
	xprop := peertest.Need(t, "xprop")
	xterm := peertest.Need(t, "xterm")
	out := filepath.Join(t.TempDir(), "line")
	// A small xterm at the top left; the rest of the display keeps the pattern.
	cmd := exec.Command(xterm, "-display", display, "-geometry", "20x4+0+0", "-e", "sh", "-c", `read x; printf %s "$x" > "$0"; sleep 60`, out)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	xdo := peertest.Need(t, "xdotool")
	t.Setenv("DISPLAY", display)
	if b, err := exec.Command(xdo, "search", "--sync", "--onlyvisible", "--class", "xterm").CombinedOutput(); err != nil {
		t.Fatalf("xdotool search: %v %s", err, b)
	}
	if b, err := exec.Command(xdo, "mousemove", "20", "20").CombinedOutput(); err != nil {
		t.Fatalf("xdotool: %v %s", err, b)
	}

	rc := defaultRC() // the sharer is asked, about the session and about each viewer
	e := newEnv(t, rc)
	c := offerDisplayConn(t, e, display)
	prompts := make(chan frame.ConsentPrompt, 8)
	go func() { // the sharer accepts every question
		r := frame.NewReader(c)
		for {
			f, err := r.Next()
			if err != nil {
				return
			}
			var p frame.ConsentPrompt
			if f.Type != frame.Prompt || frame.DecodeJSON(f, &p) != nil {
				continue
			}
			prompts <- p
			_ = frame.WriteJSON(c, frame.Answer, frame.ConsentAnswer{ID: p.ID, Accept: true})
		}
	}()
	ss := startScreen(t, e, ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if p := <-prompts; p.Kind != ticket.KindScreen || p.Helper.User != "alice" {
		t.Fatalf("the session's prompt %+v", p)
	}
	main := dialViewer(t, ss)
	main.frame()

	bob, _ := e.pki.leaf(t, "urn:ibcm:user:bob", x509.ExtKeyUsageClientAuth)
	vt := viewerTicket(e, bob, ss.tk.Session, ticket.KindScreen)
	vs := openScreen(t, e, bob, vt)
	if p := <-prompts; p.Kind != ticket.KindScreen || p.Helper.User != "bob" || p.Mode != ticket.ModeView || !strings.Contains(PromptText(p), "see this device's screen") {
		t.Fatalf("the viewer's prompt %+v", p)
	}
	if st := waitTicket(t, e, wire.ReportStarted, vt.ID); st.Mode != ticket.ModeView {
		t.Errorf("viewer started %+v", st)
	}
	if vs.s.Device.Mode != ticket.ModeView || vs.s.Device.Terminal != TerminalScreen {
		t.Errorf("the viewer's greeting %+v", vs.s.Device)
	}
	v := dialViewer(t, vs)
	if v.w != testW || v.h != testH {
		t.Fatalf("the viewer's screen is %dx%d", v.w, v.h)
	}
	// The viewer's frame is the display's, outside the xterm and the pointer.
	fb := v.frame()
	bad := 0
	for y := 0; y < testH; y++ {
		for x := 0; x < testW; x++ {
			if x < 200 && y < 100 {
				continue
			}
			p := fb[(y*testW+x)*4:] // little-endian 32 bits: blue, green, red
			if got := [3]byte{p[2], p[1], p[0]}; got != want(x, y) {
				if bad++; bad < 5 {
					t.Errorf("viewer's pixel %d,%d is %v, want %v", x, y, got, want(x, y))
				}
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d pixels of the viewer's frame differ from the display", bad)
	}

	// The viewer types, clicks and pastes: nothing arrives, whatever the session's mode.
	v.key('v')
	v.click(30, 30)
	v.send(append(binary.BigEndian.AppendUint32([]byte{6, 0, 0, 0}, 11), "viewer-clip"...))
	v.key(0xff0d)
	v.frame() // x11vnc has handled the viewer's messages before it sends this update
	if mc := vs.s.RequestMode(ticket.ModeControl); mc != nil {
		t.Fatal(mc)
	}
	for ev := range vs.events {
		if ev.Type == frame.Mode {
			if ev.Mode.Granted {
				t.Fatalf("a viewer got control: %+v", ev.Mode)
			}
			break
		}
	}
	main.key('c')
	main.key(0xff0d)
	var line []byte
	waitFor(t, "the main helper's keys in the xterm", func() bool {
		var err error
		line, err = os.ReadFile(out)
		return err == nil
	})
	if string(line) != "c" {
		t.Fatalf("the xterm read %q, want \"c\": the viewer's keys arrived", line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	b, _ := exec.CommandContext(ctx, xprop, "-display", display, "-root", "CUT_BUFFER0").CombinedOutput()
	cancel()
	if strings.Contains(string(b), "viewer-clip") {
		t.Fatalf("the viewer's clipboard text reached the device: %s", b)
	}

	// The viewer leaves: its leg ends, the session and its x11vnc go on.
	if err := vs.s.End("bye"); err != nil {
		t.Fatal(err)
	}
	if r := waitTicket(t, e, wire.ReportEnded, vt.ID); r.Outcome != wire.OutcomeCompleted || r.BytesOut == 0 {
		t.Errorf("the viewer's end %+v", r)
	}
	if fb := main.frame(); len(fb) != testW*testH*4 {
		t.Fatal("no frame for the main helper after the viewer left")
	}
	e.rep.mu.Lock()
	for _, r := range e.rep.all {
		if r.Event == wire.ReportEnded && r.Ticket == ss.tk.ID {
			t.Errorf("the session ended with its viewer: %+v", r)
		}
	}
	e.rep.mu.Unlock()

	// A viewer whose VNC client sends a message the filter does not allow: its leg ends
	// (failed), the session goes on.
	vt3 := viewerTicket(e, bob, ss.tk.Session, ticket.KindScreen)
	vs3 := openScreen(t, e, bob, vt3)
	<-prompts
	waitTicket(t, e, wire.ReportStarted, vt3.ID)
	v3 := dialViewer(t, vs3)
	v3.frame()
	v3.send([]byte{250, 0, 1, 2}) // xvp
	if r := waitTicket(t, e, wire.ReportEnded, vt3.ID); r.Outcome != wire.OutcomeFailed || !strings.Contains(r.Message, "xvp") {
		t.Errorf("the forbidden viewer's end %+v", r)
	}
	if !strings.Contains(e.auditText(), "the viewer bob ended") {
		t.Errorf("no audit of the forbidden message: %s", e.auditText())
	}
	if fb := main.frame(); len(fb) != testW*testH*4 {
		t.Fatal("no frame for the main helper after a viewer's forbidden message")
	}

	// Another viewer joins; the session ends: so does the viewer's leg.
	vt2 := viewerTicket(e, bob, ss.tk.Session, ticket.KindScreen)
	vs2 := openScreen(t, e, bob, vt2)
	<-prompts
	waitTicket(t, e, wire.ReportStarted, vt2.ID)
	v2 := dialViewer(t, vs2)
	v2.frame()
	ss.s.End("done")
	timeout := time.After(15 * time.Second)
	for done := false; !done; {
		select {
		case ev := <-vs2.events:
			done = ev.Type == frame.End
		case <-timeout:
			t.Fatal("the session's end did not reach the viewer")
		}
	}
	select {
	case err := <-vs2.served:
		if err != nil {
			t.Errorf("the viewer's port: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the viewer's port still serves after the session ended")
	}
}

// A viewer's ticket whose kind is not the session's is refused.
func TestViewerKindMismatch(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser = true, false
	e := newEnv(t, rc)
	signed, tk := e.ticketFor(ticket.ModeUnattended, ticket.ModeView, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(e.alice); err != nil {
		t.Fatal(err)
	}
	e.rep.wait(t, wire.ReportStarted)
	bob, _ := e.pki.leaf(t, "urn:ibcm:user:bob", x509.ExtKeyUsageClientAuth)
	vt := viewerTicket(e, bob, tk.Session, ticket.KindScreen)
	if err := e.host.Request(context.Background(), e.sign(vt, e.mp)); err == nil {
		t.Fatal("a screen viewer's ticket for a terminal session was accepted")
	}
	if r := waitTicket(t, e, wire.ReportRefused, vt.ID); r.Code != CodeViewerKind {
		t.Errorf("refused %+v", r)
	}
}
