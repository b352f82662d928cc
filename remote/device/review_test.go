package device

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Text a helper controls (the reason of a session, the card of their user, chat) and
// that reaches a local user's terminal: escape sequences in it could rewrite the consent
// question (show "view" where "control" is asked) or make the terminal answer on its
// input.
const hostile = "\x1b[2K\x1b[1Aview only\u009b2J\u009b31m\r\b\x07\x0e\u2028done"

// controls returns the control characters of s other than newline (which the clients
// write themselves) and the escape sequences of the share client's own status line.
func controls(s string) []rune {
	var out []rune
	for _, r := range s {
		if r != '\n' && (unicode.IsControl(r) || r == 0x2028 || r == 0x2029) {
			out = append(out, r)
		}
	}
	return out
}

// security review: `ibcm-client consent --watch` printed the helper's reason, card and
// chat raw to the local user's terminal.
func TestWatchShowsNoControlCharactersOfTheHelper(t *testing.T) {
	rc := defaultRC()
	rc.ConsentTimeout = "20s"
	e := newEnv(t, rc)
	inW, out, cancel := e.watch(t)

	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Card: ticket.Card{User: "alice", DisplayName: "Alice\u009b2J", Title: "Help\x1b]0;x\x07desk"}, Role: ticket.RoleHelper,
		Mode: ticket.ModeControl, Modes: []string{ticket.ModeView, ticket.ModeControl}, Reason: hostile, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	waitText(t, out, "asks for a remote control session")
	inW.Write([]byte("y\n"))
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	h.send(frame.Chat, []byte("hi"+hostile))
	waitText(t, out, "done\n") // the chat line's end
	if c := controls(out.String()); len(c) > 0 {
		t.Errorf("the watcher's terminal got control characters %q: %q", string(c), out.String())
	}
	h.send(frame.End, nil)
	e.rep.wait(t, wire.ReportEnded)
	quiet(t, e, cancel)
}

// security review: the share client's status line dropped ESC only: C1 controls (a CSI in
// one character), carriage return, backspace and the like from the helper's text reached
// the sharer's terminal.
func TestShareStatusLineShowsNoControlCharacters(t *testing.T) {
	var b bytes.Buffer
	u := &shareUI{out: &b, rows: 24, cols: 500, status: "ibcm: sharing"}
	u.prompt = &frame.ConsentPrompt{ID: "1", Session: "s", Helper: frame.Peer{User: "alice", DisplayName: "Alice\u009b2J", Role: "helper"}, Mode: "control", Reason: hostile}
	u.drawLocked()
	u.prompt = nil
	u.last = "helper: " + hostile
	u.drawLocked()
	u.status = PresenceText(frame.Presence{Session: "s", Mode: "view", Message: hostile, Helpers: []frame.Peer{{User: "alice", Title: hostile}}})
	u.drawLocked()
	// Strip the status line's own sequences: save, move, erase, reverse … reset, restore.
	s := b.String()
	for _, seq := range []string{"\x1b7", "\x1b[24;1H", "\x1b[2K", "\x1b[7m", "\x1b[0m", "\x1b8"} {
		s = strings.ReplaceAll(s, seq, "")
	}
	if c := controls(s); len(c) > 0 {
		t.Errorf("the status line carries control characters %q: %q", string(c), s)
	}
	if !strings.Contains(s, "view only") || !strings.Contains(s, "done") {
		t.Errorf("the printable text is lost: %q", s)
	}
}

// security review: a session started in elevated mode on a shared terminal put no root
// shell up: the mode said elevated (the share client then showed the helper's keystrokes
// instead of running them) while the helper's keys went to the sharer's own shell.
func TestElevatedAtStartGetsTheElevatedShell(t *testing.T) {
	e := newEnv(t, defaultRC())
	inR, inW := io.Pipe()
	defer inW.Close()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Share(ctx, ShareOptions{Socket: e.sock, Shell: "/bin/sh", In: inR, Out: out, Size: func() (uint16, uint16) { return 24, 80 }})
	waitText(t, out, "connected to the ibcm agent")
	signed, _ := e.ticketFor(ticket.ModeElevated, ticket.ModeView, ticket.ModeControl, ticket.ModeElevated)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	waitText(t, out, "allow elevated access for")
	inW.Write([]byte{EscapeKey, 'y'})
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	if h.g.Mode != ticket.ModeElevated {
		t.Fatalf("greeting %+v", h.g)
	}
	// The shared shell has IBCM_SHARED=1 in its environment; the elevated shell does not.
	h.send(frame.Data, []byte("echo SHELL=${IBCM_SHARED:-elevated}\r"))
	h.waitOutput(`SHELL=(1|elevated)\r?\n`)
	if strings.Contains(h.output(), "SHELL=1") {
		t.Errorf("in elevated mode the helper typed into the sharer's own shell: %q", h.output())
	}
	h.send(frame.End, nil)
	e.rep.wait(t, wire.ReportEnded)
	quiet(t, e, cancel)
}

// security review: the share socket routed the sharer's frames to one session per local
// user (the last one started). With a session on a new shell (answered from `consent
// --watch`) and then one on the terminal they share, the sharer's "end" and "drop to
// view" reached the second only: the first helper kept control.
func TestSharerEndsEverySessionOfTheirs(t *testing.T) {
	e := newEnv(t, defaultRC())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wout := &syncBuffer{}
	go Watch(ctx, e.sock, strings.NewReader(""), wout)
	waitText(t, wout, "connected to the ibcm agent")
	inR, inW := io.Pipe()
	defer inW.Close()
	out := &syncBuffer{}
	var hs []*helper
	for i := 0; i < 2; i++ {
		if i == 1 { // the user now shares a terminal too
			go Share(ctx, ShareOptions{Socket: e.sock, Shell: "/bin/sh", In: inR, Out: out, Size: func() (uint16, uint16) { return 24, 80 }})
			waitText(t, out, "connected to the ibcm agent")
		}
		signed, tk := e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
		if err := e.host.Request(context.Background(), signed); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the consent question", func() bool {
			code, _ := Answer(context.Background(), e.sock, tk.Session, true)
			return code == "accepted"
		})
		h, err := e.connect(e.alice)
		if err != nil {
			t.Fatal(err)
		}
		h.send(frame.Ping, nil) // the session's loop runs
		h.next(frame.Pong)
		hs = append(hs, h)
	}
	if hs[0].g.Terminal != TerminalNewShell || hs[1].g.Terminal != TerminalShared {
		t.Fatalf("terminals %q and %q", hs[0].g.Terminal, hs[1].g.Terminal)
	}
	inW.Write([]byte{EscapeKey, 'v'}) // the sharer drops "the helper" to view
	for i, h := range hs {
		var mc frame.ModeChange
		if err := frame.DecodeJSON(h.next(frame.Mode), &mc); err != nil || mc.Mode != ticket.ModeView || !mc.Granted {
			t.Errorf("session %d: the drop to view: %+v %v", i+1, mc, err)
		}
	}
	inW.Write([]byte{EscapeKey, 'e'}) // and ends "the session"
	for _, h := range hs {
		h.next(frame.End)
	}
	quiet(t, e, cancel)
}

// security review: the share client tells "the helper's keys" from "the elevated shell's
// output" (both Data frames from the agent) by the mode of the last status line, from any
// session of the user. With two sessions on one shared terminal, the second's status line
// (mode control) made the client type the first's elevated root-shell output (a log line
// anyone could write, say) into the sharer's own shell, which ran it. A shared terminal
// now serves one session at a time: a second is refused (sharer_busy).
func TestSharedTerminalServesOneSessionAtATime(t *testing.T) {
	e := newEnv(t, defaultRC())
	inR, inW := io.Pipe()
	defer inW.Close()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Share(ctx, ShareOptions{Socket: e.sock, Shell: "/bin/sh", In: inR, Out: out, Size: func() (uint16, uint16) { return 24, 80 }})
	waitText(t, out, "connected to the ibcm agent")
	start := func(mode string) *helper {
		signed, tk := e.ticketFor(mode, ticket.ModeView, ticket.ModeControl, ticket.ModeElevated)
		if err := e.host.Request(context.Background(), signed); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the consent question", func() bool {
			code, _ := Answer(context.Background(), e.sock, tk.Session, true)
			return code == "accepted"
		})
		h, err := e.connect(e.alice)
		if err != nil {
			t.Fatal(err)
		}
		h.send(frame.Ping, nil)
		h.next(frame.Pong)
		return h
	}
	h1 := start(ticket.ModeElevated)
	signed, _ := e.ticketFor(ticket.ModeControl, ticket.ModeView, ticket.ModeControl)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	if rep := e.rep.wait(t, wire.ReportRefused); rep.Code != CodeSharerBusy {
		t.Errorf("the second session: %+v", rep)
	}
	h1.send(frame.Data, []byte("printf 'echo INJ%s\\n' $((6*7))\r"))
	h1.waitOutput(`INJ42`)
	inW.Write([]byte{EscapeKey, 'e'})
	h1.next(frame.End)
	e.rep.wait(t, wire.ReportEnded)
	// The terminal is free again.
	h3 := start(ticket.ModeControl)
	h3.send(frame.Data, []byte("echo AGAIN$((2+2))\r"))
	h3.waitOutput(`AGAIN4`)
	if strings.Contains(out.String(), "\nINJ42") || regexp.MustCompile(`(?m)^INJ42`).MatchString(h3.output()) {
		t.Errorf("the elevated shell's output ran in the sharer's shell")
	}
	h3.send(frame.End, nil)
	e.rep.wait(t, wire.ReportEnded)
	quiet(t, e, cancel)
}

// quiet ends the test's share and watch clients and waits until the agent has let them
// go, so that nothing logs after the test.
func quiet(t *testing.T, e *env, cancel context.CancelFunc) {
	cancel()
	waitFor(t, "the share clients to go", func() bool {
		e.host.hub.mu.Lock()
		defer e.host.hub.mu.Unlock()
		return len(e.host.hub.clients) == 0
	})
	time.Sleep(50 * time.Millisecond) // the "client gone" line follows the removal
}

// security review: the session port took any number of connections that send nothing,
// each holding a goroutine and a descriptor of the root agent for 15 s while the session
// is pending. Past maxDirectPending they are closed at once.
func TestDirectPortBoundsSilentConnections(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser, rc.AllowDirect = true, false, true
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	rc.DirectPort = port
	e := newEnv(t, rc)
	e.host.c.Relay = func(ctx context.Context, _, _ string) (io.ReadWriteCloser, error) {
		<-ctx.Done() // a relay that never answers
		return nil, ctx.Err()
	}
	e.host.c.Intranet = func() bool { return true }
	e.host.c.DirectAddrs = func() []net.IP { return []net.IP{net.IPv4(127, 0, 0, 1)} }
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Role: ticket.RoleHelper, Mode: ticket.ModeUnattended, Modes: []string{ticket.ModeUnattended}, Direct: true, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	waitFor(t, "the session port", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			silent = append(silent, c)
		}
		return err == nil
	})
	for len(silent) < 3*maxDirectPending {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	closedSoon := 0
	for _, c := range silent[maxDirectPending:] {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeoutErr(err) {
			closedSoon++
		}
	}
	if closedSoon < maxDirectPending {
		t.Errorf("%d of %d connections past the bound were closed at once", closedSoon, 2*maxDirectPending)
	}
	for _, c := range silent {
		c.Close()
	}
	silent = nil
	// The helper still gets in once the silent ones are gone.
	waitFor(t, "the helper's direct connection", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		e2e.WritePreamble(c, tk.ID)
		tc := tls.Client(c, e2e.HelperConfig(e.alice, e.pki.roots, deviceID, nil, nil))
		_ = tc.SetDeadline(time.Now().Add(2 * time.Second))
		if tc.Handshake() != nil {
			c.Close()
			return false
		}
		t.Cleanup(func() { tc.Close() })
		return true
	})
	if st := e.rep.wait(t, wire.ReportStarted); st.Transport != wire.TransportDirect {
		t.Errorf("started %+v", st)
	}
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// security review: the notice to the logged-in terminals (wall) carried the helper's card
// as the MP sent it (a display name may hold C1 controls).
func TestNoticeShowsNoControlCharacters(t *testing.T) {
	rc := defaultRC()
	rc.ConsentTimeout = "1s"
	e := newEnv(t, rc)
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Card: ticket.Card{User: "alice", DisplayName: "Alice\u009b2J\u0085"}, Role: ticket.RoleHelper,
		Mode: ticket.ModeControl, Modes: []string{ticket.ModeControl}, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-e.notices:
		if c := controls(n); len(c) > 0 || !strings.Contains(n, "Alice2J") {
			t.Errorf("notice %q carries %q", n, string(c))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notice")
	}
	e.rep.wait(t, wire.ReportConsentTimeout)
}

// security review: one local user could take all 64 places of the share socket (watch
// clients cost nothing), and the device's user could then neither share nor answer a
// consent question. One user holds at most maxClientsPerUser.
func TestShareSocketPlacesPerUser(t *testing.T) {
	e := newEnv(t, defaultRC())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var outs []*syncBuffer
	for i := 0; i <= maxClientsPerUser; i++ {
		out := &syncBuffer{}
		outs = append(outs, out)
		go Watch(ctx, e.sock, strings.NewReader(""), out)
		waitFor(t, "the watcher's answer", func() bool {
			s := out.String()
			return strings.Contains(s, "connected to the ibcm agent") || strings.Contains(s, "busy")
		})
	}
	busy := 0
	for _, o := range outs {
		if strings.Contains(o.String(), "busy") {
			busy++
		}
	}
	if busy != 1 {
		t.Errorf("%d of %d watch clients of one user were turned away, want 1", busy, len(outs))
	}
	quiet(t, e, cancel)
}
