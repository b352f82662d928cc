package device

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/creack/pty"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Terminal kinds (Greeting.Terminal).
const (
	TerminalShared   = "shared"
	TerminalNewShell = "new-shell"
	TerminalScreen   = "screen" // a screen session: the display over RFB
)

// Sources of the events a session's loop handles.
const (
	fromHelper = iota
	fromSharer
	fromShell
	fromElevated
	fromConsent
	fromViewer
	fromScreen // the VNC server's side ended, or the filter refused the helper's message
)

type event struct {
	src    int
	f      frame.Frame
	client *shareClient
	err    error
	mode   string // fromConsent: the mode asked
	answer string // fromConsent: accepted, denied, consent-timeout
	viewer *viewer
	clip   []byte // fromConsent about clipboard text: the text
}

// session is one session served by the host.
type session struct {
	h      *Host
	t      *ticket.Ticket
	p      Policy
	ctx    context.Context
	cancel context.CancelFunc
	log    zerolog.Logger

	endOnce sync.Once
	endCh   chan struct{}
	serving chan struct{} // closed once the loop runs: viewers join then
	mu      sync.Mutex
	outcome string
	message string
	closers []io.Closer

	sharerUID  int
	sharer     Account
	terminal   string
	mode       string
	transport  string
	started    time.Time
	modes      []wire.SessionMode
	bytesIn    atomic.Int64
	bytesOut   atomic.Int64
	lastActive atomic.Int64

	helper   *tls.Conn
	hmu      sync.Mutex // writes to helper
	events   chan event
	shell    *Shell // the new shell, when the terminal is one
	share    *shareClient
	elevated *Shell
	rec      *recorder
	asking   bool
	viewers  []*viewer
	detach   func() // takes the session's sink off the share socket

	claimedShared bool // this session holds the sharer's shared terminal (hub.claimShared)

	screen      *Screen      // a screen session's VNC server
	screenOwner *shareClient // the sharer's client that offered the display: its end ends the session
	screenIn    *rfb.Filter  // the helper's RFB goes through it to the server, in the loop
}

func newSession(h *Host, t *ticket.Ticket, p Policy, ctx context.Context, cancel context.CancelFunc) *session {
	return &session{h: h, t: t, p: p, ctx: ctx, cancel: cancel, endCh: make(chan struct{}), serving: make(chan struct{}), sharerUID: -1,
		log:    h.log.With().Str("session_id", t.Session).Str("ticket_id", t.ID).Str("helper", t.Helper).Logger(),
		events: make(chan event, 64)}
}

// end ends the session once: every leg and listener is closed.
func (s *session) end(outcome, message string) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.outcome, s.message = outcome, message
		cl := s.closers
		s.closers = nil
		claimed, uid := s.claimedShared, s.sharerUID
		close(s.endCh) // under mu: a claim of the shared terminal sees it
		s.mu.Unlock()
		if claimed {
			s.h.hub.releaseShared(uid)
		}
		for _, c := range cl {
			_ = c.Close()
		}
		s.cancel()
	})
}

func (s *session) ended() bool {
	select {
	case <-s.endCh:
		return true
	default:
		return false
	}
}

// closeAtEnd registers c to be closed when the session ends (at once if it has).
func (s *session) closeAtEnd(c io.Closer) {
	s.mu.Lock()
	if s.ended() {
		s.mu.Unlock()
		_ = c.Close()
		return
	}
	s.closers = append(s.closers, c)
	s.mu.Unlock()
}

func (s *session) report(r wire.SessionReport) {
	r.Ticket = s.t.ID
	if r.Sharer == "" && s.sharerUID >= 0 {
		r.Sharer, r.SharerName = s.sharer.Name, s.sharer.FullName
	}
	s.h.report(s.ctx, s.t.Session, r)
}

func (s *session) consentTimeout() time.Duration {
	return durationOr(s.p.RC.ConsentTimeout, 30*time.Second)
}

func (s *session) peer(mode string) frame.Peer {
	c := s.t.Card
	return frame.Peer{User: s.t.Helper, DisplayName: c.DisplayName, Title: c.Title, Organization: c.Organization, Role: s.t.Role, Mode: mode, Console: s.t.Console}
}

// run is the life of the session: consent, transports, end to end, frames, the end.
func (s *session) run() {
	outcome, code, err := s.consent()
	if err != nil {
		s.finish(outcome, code, err)
		return
	}
	conn, transport, err := s.connect(s.t)
	s.transport = transport
	if err != nil {
		code := CodeTransport
		if errors.Is(err, e2e.ErrPeer) {
			code = CodeE2E
		}
		if s.ended() {
			s.finish(s.outcome, "", errors.New(s.message))
			return
		}
		s.finish(wire.OutcomeFailed, code, err)
		return
	}
	s.serve(conn)
}

// finish handles a session that never started: logged, reported, audited.
func (s *session) finish(outcome, code string, err error) {
	s.end(outcome, err.Error())
	ev := s.log.Info()
	if code != "" {
		ev = s.log.Warn().Str("code", code)
	}
	ev.Str("outcome", outcome).Err(err).Msg("remote session not started")
	if code != "" {
		s.h.c.Audit("warning", fmt.Sprintf("remote session %s for %s refused (%s): %v", s.t.Session, s.t.Helper, code, err))
		s.report(wire.SessionReport{Event: wire.ReportRefused, Outcome: wire.OutcomeRefused, Code: code, Message: err.Error()})
	} else {
		s.h.c.Audit("info", fmt.Sprintf("remote session %s for %s: %s", s.t.Session, s.t.Helper, outcome))
		if outcome != wire.OutcomeDenied && outcome != wire.OutcomeConsentTimeout { // consent() reported those
			s.report(wire.SessionReport{Event: wire.ReportEnded, Outcome: outcome, Message: err.Error()})
		}
	}
	s.h.writeLog(s.entry(outcome, code, err.Error()))
}

// consent finds the sharer and asks them when policy says so.
func (s *session) consent() (outcome, code string, err error) {
	rc := s.p.RC
	timeout := s.consentTimeout()
	uid := s.h.hub.present()
	if uid < 0 && s.t.Mode == ticket.ModeUnattended {
		// Nobody present: allow_unattended decides (checked with the policy), no prompt.
		s.terminal = TerminalNewShell
		if s.t.Kind == ticket.KindScreen {
			s.terminal = TerminalScreen
		}
		s.report(wire.SessionReport{Event: wire.ReportAccepted, Mode: s.t.Mode, Message: "unattended"})
		return "", "", nil
	}
	deadline, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	if uid < 0 {
		via := ""
		if s.t.Console {
			via = " via the web console"
		}
		s.h.c.Notice(frame.Printable(fmt.Sprintf("ibcm: %s (%s) asks%s for a remote %s session on this device. Run `ibcm-client share` (or `ibcm-client consent --watch`) within %s to answer.",
			orDash(s.t.Card.DisplayName), s.t.Helper, via, s.t.Mode, timeout.Round(time.Second))))
		s.report(wire.SessionReport{Event: wire.ReportConsentAsked, Mode: s.t.Mode, Message: "nobody present: logged-in terminals told"})
		uid = s.h.hub.waitPresent(deadline)
		if uid < 0 {
			if s.ended() {
				return s.outcome, "", errors.New(s.message)
			}
			s.report(wire.SessionReport{Event: wire.ReportConsentTimeout, Outcome: wire.OutcomeConsentTimeout})
			return wire.OutcomeConsentTimeout, "", errors.New("nobody at the device answered in time")
		}
	}
	s.sharerUID = uid
	if a, err := LookupUID(uid); err == nil {
		s.sharer = a
	} else {
		s.sharer = Account{UID: uid, Name: strconv.Itoa(uid)}
	}
	s.log = s.log.With().Str("sharer", s.sharer.Name).Logger()
	if s.t.Kind == ticket.KindScreen && s.t.Mode != ticket.ModeUnattended {
		if s.h.hub.displayOf(uid) == nil {
			return wire.OutcomeRefused, CodeNoDisplay, fmt.Errorf("%s: %w", s.sharer.Name, ErrNoDisplay)
		}
	}
	if s.t.Kind != ticket.KindScreen && s.t.Mode != ticket.ModeUnattended && s.h.hub.shareOf(uid) != nil {
		if !s.h.hub.claimShared(uid) {
			return wire.OutcomeRefused, CodeSharerBusy, fmt.Errorf("%s's shared terminal is in another session", s.sharer.Name)
		}
		s.mu.Lock()
		ended := s.ended()
		s.claimedShared = !ended
		s.mu.Unlock()
		if ended {
			s.h.hub.releaseShared(uid)
			return s.outcome, "", errors.New(s.message)
		}
	}
	if rc.PromptUser {
		s.report(wire.SessionReport{Event: wire.ReportConsentAsked, Mode: s.t.Mode})
		ans := s.h.hub.ask(deadline, uid, frame.ConsentPrompt{Session: s.t.Session, Helper: s.peer(""), Mode: s.t.Mode, Kind: s.t.Kind, Reason: s.t.Reason, Timeout: int(timeout / time.Second)})
		if s.ended() {
			return s.outcome, "", errors.New(s.message)
		}
		switch ans {
		case "denied":
			s.report(wire.SessionReport{Event: wire.ReportDenied, Outcome: wire.OutcomeDenied})
			return wire.OutcomeDenied, "", errors.New(s.sharer.Name + " denied the session")
		case "consent-timeout":
			s.report(wire.SessionReport{Event: wire.ReportConsentTimeout, Outcome: wire.OutcomeConsentTimeout})
			return wire.OutcomeConsentTimeout, "", errors.New(s.sharer.Name + " did not answer in time")
		}
	}
	s.report(wire.SessionReport{Event: wire.ReportAccepted, Mode: s.t.Mode})
	switch {
	case s.t.Kind == ticket.KindScreen:
		s.terminal = TerminalScreen
	case s.t.Mode == ticket.ModeUnattended:
		s.terminal = TerminalNewShell
	case s.claimedShared && s.h.hub.shareOf(uid) != nil:
		s.terminal = TerminalShared
	default:
		s.terminal = TerminalNewShell // a watcher who is not sharing: a shell as them
	}
	return "", "", nil
}

// connect opens the transports and returns the first leg whose end-to-end TLS completes.
func (s *session) connect(t *ticket.Ticket) (*tls.Conn, string, error) {
	ctx, cancel := context.WithTimeout(s.ctx, time.Until(t.ExpiresAt)+time.Minute)
	defer cancel()
	if s.h.c.RefreshCRL != nil {
		s.h.c.RefreshCRL(ctx)
	}
	_, site := s.h.identity()
	cfg := e2e.DeviceConfig(s.h.c.Cert(), e2e.HelperExpect{Roots: s.h.c.Roots(), User: t.Helper, KeyHash: t.HelperKey, Now: s.h.c.Now, Revoked: s.h.c.Revoked,
		Console: t.Console, MP: t.MP, Site: site})
	results := make(chan legResult, 8)
	legs := 0
	var lns []net.Listener
	if t.Direct && s.p.RC.AllowDirect && s.h.c.Intranet != nil && s.h.c.Intranet() && s.h.c.DirectAddrs != nil {
		port := s.p.RC.DirectPort
		if port == 0 {
			port = 2701
		}
		for _, ip := range s.h.c.DirectAddrs() {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
			if err != nil {
				s.log.Warn().Err(err).Str("addr", ip.String()).Msg("session port")
				continue
			}
			lns = append(lns, ln)
			go s.acceptDirect(ctx, s.log, t, ln, cfg, func(c *tls.Conn, err error) {
				if err != nil {
					return // logged by acceptDirect; the relay may still come
				}
				results <- legResult{c: c, transport: wire.TransportDirect}
			})
		}
	}
	closeListeners := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	defer closeListeners()
	// With the session port open, the relay leg waits directGrace: the helper, which retries
	// the port while it is refused, then reaches it first (a relay leg already waiting at the
	// MP would otherwise win every race once the sharer consents).
	var wait time.Duration
	if len(lns) > 0 {
		wait = directGrace
	}
	if s.h.c.Relay != nil {
		legs++
		go func() {
			if wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return
				}
			}
			rw, err := s.h.c.Relay(ctx, t.Session, t.ID)
			if err != nil {
				results <- legResult{err: fmt.Errorf("relay: %w", err), transport: wire.TransportRelay}
				return
			}
			c := tls.Server(asConn(rw), cfg)
			if err := c.HandshakeContext(ctx); err != nil {
				c.Close()
				results <- legResult{err: fmt.Errorf("end-to-end TLS over the relay: %w", err), transport: wire.TransportRelay}
				return
			}
			results <- legResult{c: c, transport: wire.TransportRelay}
		}()
	}

	if legs == 0 && len(lns) == 0 {
		return nil, "", errors.New("no transport: no relay dialer and no session port")
	}
	var lastErr error
	for {
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errors.New("no transport came up in time")
			}
			return nil, "", lastErr
		case r := <-results:
			if r.err != nil {
				lastErr = r.err
				s.log.Warn().Err(r.err).Str("transport", r.transport).Msg("a leg failed")
				if r.transport == wire.TransportRelay && len(lns) == 0 {
					return nil, "", r.err // the MP refused or the session ended there
				}
				continue
			}
			closeListeners()
			go func() { // a leg that completes after the winner is closed
				for {
					select {
					case r := <-results:
						if r.c != nil {
							r.c.Close()
						}
					case <-time.After(time.Minute):
						return
					}
				}
			}()
			return r.c, r.transport, nil
		}
	}
}

// directGrace is how long the relay leg waits when the session port is open: more than
// the helper's longest pause between two tries of the port (250 ms) and a handshake.
const directGrace = 500 * time.Millisecond

type legResult struct {
	c         *tls.Conn
	transport string
	err       error
}

// maxDirectPending bounds the connections of a session port that have not finished their
// preamble and end-to-end handshake (each may take 15 s): more are closed at once, and the
// helper still has the relay.
const maxDirectPending = 16

// acceptDirect takes connections on the session port while the session is pending: the
// preamble must name this session's ticket, then the end-to-end TLS. It logs with log, the
// session's logger as it was when the port opened (serve replaces s.log).
func (s *session) acceptDirect(ctx context.Context, log zerolog.Logger, t *ticket.Ticket, ln net.Listener, cfg *tls.Config, done func(*tls.Conn, error)) {
	pending := make(chan struct{}, maxDirectPending)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		select {
		case pending <- struct{}{}:
		default: // a flood of connections that send nothing: no goroutine, no descriptor kept
			c.Close()
			continue
		}
		go func() {
			defer func() { <-pending }()
			_ = c.SetDeadline(time.Now().Add(15 * time.Second))
			id, err := e2e.ReadPreamble(c)
			if err == nil && id != t.ID {
				err = fmt.Errorf("%w: the preamble names ticket %s, not this session's", e2e.ErrPeer, id)
			}
			if err != nil {
				log.Warn().Err(err).Str("remote", c.RemoteAddr().String()).Msg("session port: connection refused")
				c.Close()
				done(nil, err)
				return
			}
			tc := tls.Server(c, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				log.Warn().Err(err).Str("remote", c.RemoteAddr().String()).Msg("session port: end-to-end TLS failed")
				s.h.c.Audit("warning", fmt.Sprintf("remote session %s: a direct connection from %s refused: %v", t.Session, c.RemoteAddr(), err))
				c.Close()
				done(nil, err)
				return
			}
			_ = c.SetDeadline(time.Time{})
			select {
			case <-ctx.Done():
				tc.Close()
			default:
				done(tc, nil)
			}
		}()
	}
}

// asConn makes a relay stream a net.Conn for crypto/tls.
func asConn(rw io.ReadWriteCloser) net.Conn {
	if c, ok := rw.(net.Conn); ok {
		return c
	}
	return rwConn{rw}
}

type rwConn struct{ io.ReadWriteCloser }

type relayAddr struct{}

func (relayAddr) Network() string { return "relay" }
func (relayAddr) String() string  { return "relay" }

func (rwConn) LocalAddr() net.Addr                { return relayAddr{} }
func (rwConn) RemoteAddr() net.Addr               { return relayAddr{} }
func (rwConn) SetDeadline(t time.Time) error      { return nil }
func (rwConn) SetReadDeadline(t time.Time) error  { return nil }
func (rwConn) SetWriteDeadline(t time.Time) error { return nil }

func (s *session) sendHelper(t frame.Type, payload []byte) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if err := frame.Write(s.helper, t, payload); err != nil {
		s.end(wire.OutcomeFailed, "writing to the helper: "+err.Error())
	}
}

func (s *session) sendHelperJSON(t frame.Type, v any) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if err := frame.WriteJSON(s.helper, t, v); err != nil {
		s.end(wire.OutcomeFailed, "writing to the helper: "+err.Error())
	}
}

// post hands an event to the loop unless the session has ended.
func (s *session) post(e event) {
	select {
	case s.events <- e:
	case <-s.endCh:
	}
}

// serve runs an established session until it ends.
func (s *session) serve(conn *tls.Conn) {
	s.helper = conn // closed by wrapUp, after the End frame
	go func() {     // a safety net: a leg that no longer answers does not hold the session
		<-s.endCh
		time.Sleep(5 * time.Second)
		conn.Close()
	}()
	s.started = s.h.c.Now()
	s.lastActive.Store(s.started.UnixNano())
	s.mode = s.t.Mode
	s.modes = []wire.SessionMode{{Mode: s.mode, At: s.started.UTC()}}
	s.log = s.log.With().Str("transport", s.transport).Logger()
	s.log.Info().Str("mode", s.mode).Str("terminal", s.terminal).Msg("remote session started")
	s.h.c.Audit("info", fmt.Sprintf("remote session %s started: helper %s, sharer %s, mode %s, %s", s.t.Session, s.t.Helper, orDash(s.sharer.Name), s.mode, s.transport))
	s.report(wire.SessionReport{Event: wire.ReportStarted, Mode: s.mode, Transport: s.transport})

	s.sendHelperJSON(frame.Hello, frame.Greeting{Session: s.t.Session, Mode: s.mode, Sharer: s.sharer.Name, SharerName: s.sharer.FullName, Terminal: s.terminal})
	r := frame.NewReader(conn)
	helloTimer := time.AfterFunc(30*time.Second, func() { conn.Close() }) // relay streams have no deadlines
	f, err := r.Next()
	helloTimer.Stop()
	var hello frame.Greeting
	if err == nil && f.Type != frame.Hello {
		err = fmt.Errorf("%w: first frame %s, want hello", frame.ErrFrame, f.Type)
	}
	if err == nil {
		err = frame.DecodeJSON(f, &hello)
	}
	if err != nil {
		s.end(wire.OutcomeFailed, "the helper's hello: "+err.Error())
		s.wrapUp()
		return
	}
	rows, cols := max(hello.Rows, 1), max(hello.Cols, 1)
	if hello.Rows == 0 || hello.Cols == 0 {
		rows, cols = 24, 80
	}
	if s.p.RC.RecordTerminal && s.terminal == TerminalScreen {
		s.log.Warn().Msg("policy says record_terminal: screen sessions are not recorded")
	} else if s.p.RC.RecordTerminal {
		if s.p.AuditKey != "" {
			s.rec = newRecorder(s.started, cols, rows)
		} else {
			s.log.Error().Msg("policy says record_terminal but carries no audit key: the session is not recorded")
			s.h.c.Audit("error", "remote session "+s.t.Session+": not recorded: the policy carries no audit key")
		}
	}
	start := s.startTerminal
	if s.terminal == TerminalScreen {
		start = func(uint16, uint16) error { return s.startScreen() }
	}
	if err := start(rows, cols); err != nil {
		s.end(wire.OutcomeFailed, err.Error())
		s.wrapUp()
		return
	}
	// A session that starts elevated gets its root shell now, as one that escalates does
	// (else the mode says elevated while the helper types into the sharer's own shell).
	if s.mode == ticket.ModeElevated && s.terminal != TerminalScreen && s.needsElevated() {
		if err := s.startElevated(rows, cols); err != nil {
			s.end(wire.OutcomeFailed, "starting the elevated shell: "+err.Error())
			s.wrapUp()
			return
		}
	}
	s.presence("connected")
	s.bell()
	close(s.serving)
	go func() {
		for {
			f, err := r.Next()
			if err != nil {
				s.post(event{src: fromHelper, err: err})
				return
			}
			s.post(event{src: fromHelper, f: frame.Frame{Type: f.Type, Payload: append([]byte(nil), f.Payload...)}})
		}
	}()
	s.loop()
	s.wrapUp()
}

func (s *session) startTerminal(rows, cols uint16) error {
	if s.sharerUID >= 0 {
		s.detach = s.h.hub.attach(s.sharerUID, func(from *shareClient, f frame.Frame) {
			s.post(event{src: fromSharer, f: f, client: from})
		})
	}
	if s.terminal == TerminalShared {
		s.share = s.h.hub.shareOf(s.sharerUID)
		if s.share == nil {
			return errors.New("the sharer's share client is gone")
		}
		return nil
	}
	acct := s.sharer
	if s.t.Mode == ticket.ModeUnattended || s.sharerUID < 0 {
		a, err := LookupUID(0)
		if err != nil {
			a = Account{Name: "root", Home: "/root", Shell: "/bin/sh"}
		}
		acct = a
	}
	sh, err := s.h.c.Shells.Start(ShellSpec{Account: acct, Rows: rows, Cols: cols, Name: "ibcm-" + s.t.Session[:12] + "-shell"})
	if err != nil {
		return err
	}
	s.shell = sh
	go s.pump(sh, fromShell)
	return nil
}

// pump reads a shell's output into the loop; a zero-length Data event says it exited.
func (s *session) pump(sh *Shell, src int) {
	buf := make([]byte, frame.MaxData)
	for {
		n, err := sh.PTY.Read(buf)
		if n > 0 {
			s.post(event{src: src, f: frame.Frame{Type: frame.Data, Payload: append([]byte(nil), buf[:n]...)}})
		}
		if err != nil {
			s.post(event{src: src, err: io.EOF})
			return
		}
	}
}

func (s *session) presence(msg string) {
	if s.sharerUID < 0 {
		return
	}
	p := frame.Presence{Session: s.t.Session, Mode: s.mode, Message: msg}
	if s.p.RC.ShowConnectionBar {
		p.Helpers = []frame.Peer{s.peer(s.mode)}
		for _, v := range s.viewers {
			c := v.t.Card
			p.Helpers = append(p.Helpers, frame.Peer{User: v.t.Helper, DisplayName: c.DisplayName, Title: c.Title, Organization: c.Organization, Role: ticket.RoleViewer, Mode: ticket.ModeView})
		}
	}
	s.h.hub.broadcast(s.sharerUID, frame.Status, p)
}

func (s *session) bell() {
	if s.sharerUID >= 0 && (s.p.RC.PlaySound == "start_end" || s.p.RC.PlaySound == "repeatedly") {
		s.h.hub.broadcast(s.sharerUID, frame.Status, frame.Presence{Session: s.t.Session, Mode: s.mode, Message: BellMessage})
	}
}

func (s *session) active() { s.lastActive.Store(time.Now().UnixNano()) }

// loop is the session's one goroutine that decides: every input comes through events.
func (s *session) loop() {
	var maxTimer <-chan time.Time
	if d := durationOr(s.p.RC.MaxDuration, 0); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		maxTimer = t.C
	}
	idle := durationOr(s.p.RC.IdleTimeout, 0)
	var idleTick <-chan time.Time
	if idle > 0 {
		t := time.NewTicker(max(idle/4, 10*time.Millisecond))
		defer t.Stop()
		idleTick = t.C
	}
	var bellTick <-chan time.Time
	if s.p.RC.PlaySound == "repeatedly" {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		bellTick = t.C
	}
	for {
		select {
		case <-s.endCh:
			return
		case <-maxTimer:
			s.end(wire.OutcomeCompleted, "the session reached its maximum duration")
		case <-idleTick:
			if time.Since(time.Unix(0, s.lastActive.Load())) > idle {
				s.end(wire.OutcomeCompleted, "the session was idle too long")
			}
		case <-bellTick:
			s.bell()
		case e := <-s.events:
			for { // shell output already queued behind e goes out with it
				next := s.coalesce(&e)
				s.handle(e)
				if next == nil {
					break
				}
				e = *next
			}
		}
	}
}

// coalesce appends to e, a shell's output, the output of the same shell already queued
// behind it, up to one Data frame: a fast shell then costs one frame (and one TLS record on
// every hop) per frame.MaxData rather than per PTY read of 4 KiB. It never waits. It
// returns the first queued event it could not merge, which the caller handles next.
func (s *session) coalesce(e *event) *event {
	if (e.src != fromShell && e.src != fromElevated) || e.err != nil || e.f.Type != frame.Data {
		return nil
	}
	for {
		select {
		case n := <-s.events:
			if n.src != e.src || n.err != nil || n.f.Type != frame.Data || len(e.f.Payload)+len(n.f.Payload) > frame.MaxData {
				return &n
			}
			e.f.Payload = append(e.f.Payload, n.f.Payload...)
		default:
			return nil
		}
	}
}

func (s *session) handle(e event) {
	switch e.src {
	case fromHelper:
		if e.err != nil {
			if errors.Is(e.err, frame.ErrFrame) {
				s.log.Warn().Err(e.err).Msg("the helper sent a bad frame")
				s.end(wire.OutcomeFailed, e.err.Error())
			} else {
				s.end(wire.OutcomeCompleted, "the helper's connection closed")
			}
			return
		}
		s.fromHelper(e.f)
	case fromSharer:
		s.fromSharer(e)
	case fromShell, fromElevated:
		if e.err != nil {
			if e.src == fromShell {
				s.end(wire.OutcomeCompleted, "the shell exited")
			} else if s.mode == ticket.ModeElevated {
				s.setMode(ticket.ModeControl, "the elevated shell exited")
			}
			return
		}
		s.output(e.src, e.f.Payload)
	case fromViewer:
		s.viewerEvent(e)
	case fromScreen:
		s.screenEnded(e.err)
	case fromConsent:
		if e.mode == KindClipboard {
			s.clipboardAnswer(e)
			return
		}
		s.asking = false
		if e.answer == "accepted" {
			s.setMode(e.mode, "")
			return
		}
		s.sendHelperJSON(frame.Mode, frame.ModeChange{Mode: e.mode, Reason: e.answer})
		s.report(wire.SessionReport{Event: wire.ReportMode, Mode: s.mode, Message: e.mode + " " + e.answer})
	}
}

// output is terminal output: to the helper when it is the terminal the helper sees.
func (s *session) output(src int, p []byte) {
	s.active()
	if src == fromElevated {
		if s.mode != ticket.ModeElevated {
			return
		}
		if s.share != nil {
			_ = s.share.send(frame.Data, p) // the sharer sees the elevated shell
		}
	} else if s.mode == ticket.ModeElevated && s.elevated != nil {
		return // the helper sees the elevated shell meanwhile
	}
	s.bytesOut.Add(int64(len(p)))
	if s.rec != nil {
		s.rec.output(p)
	}
	s.sendHelper(frame.Data, p)
	for _, v := range s.viewers {
		if err := v.send(frame.Data, p); err != nil {
			s.dropViewer(v, "writing to the viewer: "+err.Error())
			break // the slice changed; the others get the next output
		}
		v.bytesOut.Add(int64(len(p)))
	}
}

func (s *session) fromHelper(f frame.Frame) {
	switch f.Type {
	case frame.Data:
		s.active()
		s.bytesIn.Add(int64(len(f.Payload)))
		switch {
		case s.screenIn != nil:
			// The filter reads the mode in force as each message completes, here in the
			// loop: a mode change applies from the next frame on.
			if _, err := s.screenIn.Write(f.Payload); err != nil {
				s.screenEnded(err)
			}
		case s.mode == ticket.ModeView:
			// view: the helper's input is dropped
		case s.mode == ticket.ModeElevated && s.elevated != nil:
			_, _ = s.elevated.PTY.Write(f.Payload)
		case s.shell != nil:
			_, _ = s.shell.PTY.Write(f.Payload)
		case s.share != nil:
			_ = s.share.send(frame.Data, f.Payload)
		}
	case frame.Resize:
		rows, cols, err := frame.ParseResize(f.Payload)
		if err != nil {
			return
		}
		for _, sh := range []*Shell{s.shell, s.elevated} {
			if sh != nil {
				_ = setSize(sh.PTY, rows, cols)
			}
		}
	case frame.Chat:
		if !s.p.RC.AllowChat {
			s.sendHelperJSON(frame.Status, frame.Presence{Session: s.t.Session, Mode: s.mode, Message: "chat is not allowed by this device's policy"})
			return
		}
		s.active()
		if s.rec != nil {
			s.rec.marker(s.t.Helper + ": " + string(f.Payload))
		}
		if s.sharerUID >= 0 {
			s.h.hub.broadcast(s.sharerUID, frame.Chat, f.Payload)
		}
	case frame.Mode:
		var m frame.ModeChange
		if frame.DecodeJSON(f, &m) != nil {
			s.end(wire.OutcomeFailed, "a bad mode request")
			return
		}
		s.requestMode(m.Mode)
	case frame.Ping:
		s.sendHelper(frame.Pong, nil)
	case frame.Pong:
	case frame.End:
		s.end(wire.OutcomeCompleted, "the helper ended the session")
	default:
		s.log.Warn().Str("frame", f.Type.String()).Msg("the helper sent a frame it may not send")
		s.end(wire.OutcomeFailed, "the helper sent a "+f.Type.String()+" frame")
	}
}

func (s *session) fromSharer(e event) {
	f := e.f
	switch f.Type {
	case 0: // a client of the sharer left
		if e.client == s.share {
			s.end(wire.OutcomeCompleted, "the sharer's share client closed")
		} else if e.client != nil && e.client == s.screenOwner {
			s.end(wire.OutcomeCompleted, "the sharer's share client that offered the display closed")
		}
	case frame.Data:
		if e.client != s.share {
			return
		}
		s.output(fromShell, f.Payload)
	case frame.Resize:
		if e.client == s.share {
			s.sendHelper(frame.Resize, f.Payload)
		}
	case frame.Chat:
		if !s.p.RC.AllowChat {
			return
		}
		s.active()
		if s.rec != nil {
			s.rec.marker(s.sharer.Name + ": " + string(f.Payload))
		}
		s.sendHelper(frame.Chat, f.Payload)
	case frame.Mode:
		var m frame.ModeChange
		if frame.DecodeJSON(f, &m) != nil || m.Mode != ticket.ModeView {
			return // the sharer may only drop the helper to view
		}
		s.setMode(ticket.ModeView, "the sharer dropped the helper to view")
	case frame.End:
		s.end(wire.OutcomeCompleted, "the sharer ended the session")
	}
}

func rank(m string) int {
	switch m {
	case ticket.ModeView:
		return 0
	case ticket.ModeControl:
		return 1
	case ticket.ModeElevated:
		return 2
	}
	return 3
}

// requestMode handles the helper's request for a mode.
func (s *session) requestMode(m string) {
	if !ticket.ValidMode(m) || !s.t.Allows(m) || !modeAllowed(s.p.RC, m) || m == ticket.ModeUnattended && s.mode != ticket.ModeUnattended ||
		m == ticket.ModeElevated && s.terminal == TerminalScreen {
		s.sendHelperJSON(frame.Mode, frame.ModeChange{Mode: m, Reason: "not-permitted"})
		return
	}
	if m == s.mode {
		s.sendHelperJSON(frame.Mode, frame.ModeChange{Mode: m, Granted: true})
		return
	}
	if rank(m) < rank(s.mode) || !s.p.RC.PromptUser || s.sharerUID < 0 {
		s.setMode(m, "")
		return
	}
	if s.asking {
		s.sendHelperJSON(frame.Mode, frame.ModeChange{Mode: m, Reason: "pending"})
		return
	}
	s.asking = true
	s.report(wire.SessionReport{Event: wire.ReportConsentAsked, Mode: m})
	cp := frame.ConsentPrompt{Session: s.t.Session, Helper: s.peer(s.mode), Mode: m, Kind: s.t.Kind, Reason: s.t.Reason, Timeout: int(s.consentTimeout() / time.Second)}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, s.consentTimeout())
		defer cancel()
		ans := s.h.hub.ask(ctx, s.sharerUID, cp)
		s.post(event{src: fromConsent, mode: m, answer: ans})
	}()
}

// setMode puts mode m in force.
func (s *session) setMode(m, why string) {
	if m == s.mode {
		return
	}
	if m == ticket.ModeElevated && s.needsElevated() {
		if err := s.startElevated(24, 80); err != nil {
			s.log.Error().Err(err).Msg("starting the elevated shell")
			s.sendHelperJSON(frame.Mode, frame.ModeChange{Mode: m, Reason: "failed"})
			return
		}
	}
	if s.mode == ticket.ModeElevated && s.elevated != nil {
		s.elevated.Kill()
		s.elevated = nil
	}
	s.mode = m
	now := s.h.c.Now().UTC()
	s.modes = append(s.modes, wire.SessionMode{Mode: m, At: now})
	s.log.Info().Str("mode", m).Str("why", why).Msg("remote session mode")
	s.sendHelperJSON(frame.Mode, frame.ModeChange{Mode: m, Granted: true, Reason: why})
	s.report(wire.SessionReport{Event: wire.ReportMode, Mode: m, Message: why})
	s.presence("mode " + m)
	if s.rec != nil {
		s.rec.marker("mode " + m)
	}
}

// needsElevated: elevated mode needs a root shell of its own unless the session's new
// shell is root's already.
func (s *session) needsElevated() bool { return !(s.shell != nil && s.shellIsRoot()) }

// startElevated starts the elevated root shell, in its own cgroup, its output pumped into
// the loop.
func (s *session) startElevated(rows, cols uint16) error {
	acct, err := LookupUID(0)
	if err != nil {
		acct = Account{Name: "root", Home: "/root", Shell: "/bin/sh"}
	}
	sh, err := s.h.c.Shells.Start(ShellSpec{Account: acct, Rows: rows, Cols: cols, Name: "ibcm-" + s.t.Session[:12] + "-elevated"})
	if err != nil {
		return err
	}
	s.elevated = sh
	go s.pump(sh, fromElevated)
	return nil
}

func (s *session) shellIsRoot() bool {
	return s.t.Mode == ticket.ModeUnattended || s.sharerUID < 0 || s.sharer.UID == 0
}

// wrapUp ends the terminals, reports and logs the end, and seals the recording.
func (s *session) wrapUp() {
	if s.detach != nil {
		s.detach()
	}
	for _, sh := range []*Shell{s.elevated, s.shell} {
		if sh != nil {
			sh.Kill()
		}
	}
	if s.screen != nil {
		if err := s.screen.Close(); err != nil {
			s.log.Warn().Err(err).Msg("stopping the screen's VNC server")
		}
	}
	for len(s.viewers) > 0 {
		s.dropViewer(s.viewers[0], "the session ended")
	}
	for { // viewers whose joining the loop did not see
		select {
		case e := <-s.events:
			if e.src == fromViewer && e.viewer != nil {
				s.dropViewer(e.viewer, "the session ended")
			}
			continue
		default:
		}
		break
	}
	s.mu.Lock()
	outcome, msg := s.outcome, s.message
	s.mu.Unlock()
	s.hmu.Lock()
	if s.helper != nil {
		_ = s.helper.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_ = frame.WriteJSON(s.helper, frame.End, frame.Ending{Outcome: outcome, Message: msg})
		_ = s.helper.Close()
	}
	s.hmu.Unlock()
	if s.sharerUID >= 0 {
		s.h.hub.broadcast(s.sharerUID, frame.End, frame.Ending{Outcome: outcome, Message: msg})
		s.bell()
	}
	in, out := s.bytesIn.Load(), s.bytesOut.Load()
	s.log.Info().Str("outcome", outcome).Str("why", msg).Int64("bytes_in", in).Int64("bytes_out", out).Msg("remote session ended")
	s.h.c.Audit("info", fmt.Sprintf("remote session %s ended (%s): %s; %d bytes to the device, %d from it", s.t.Session, outcome, msg, in, out))
	s.h.report(context.Background(), s.t.Session, wire.SessionReport{Ticket: s.t.ID, Event: wire.ReportEnded, Outcome: outcome, Message: msg, Mode: s.mode, BytesIn: in, BytesOut: out})
	s.h.writeLog(s.entry(outcome, "", msg))
	if s.rec != nil {
		s.h.storeRecording(s.t.Session, s.p.AuditKey, s.rec.bytes())
	}
}

func (s *session) entry(outcome, code, msg string) LogEntry {
	e := LogEntry{Session: s.t.Session, Ticket: s.t.ID, Helper: s.t.Helper, HelperName: s.t.Card.DisplayName, Mode: s.mode, Modes: s.modes,
		Transport: s.transport, Outcome: outcome, Code: code, Message: msg, Requested: s.t.IssuedAt.UTC(), Ended: s.h.c.Now().UTC(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load()}
	if s.sharerUID >= 0 {
		e.Sharer, e.SharerName = s.sharer.Name, s.sharer.FullName
	}
	if !s.started.IsZero() {
		st := s.started.UTC()
		e.Started = &st
	}
	if e.Mode == "" {
		e.Mode = s.t.Mode
	}
	return e
}

func setSize(f *os.File, rows, cols uint16) error {
	return pty.Setsize(f, &pty.Winsize{Rows: rows, Cols: cols})
}
