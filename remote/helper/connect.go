package helper

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
)

// ErrPeer is wrapped by every refusal of the device's end-to-end certificate.
var ErrPeer = e2e.ErrPeer

// errTookOther: the device closed a leg after its end-to-end TLS: it took another one.
var errTookOther = errors.New("the device took the other way")

// Defaults of Connect.
const (
	DefaultRelayAfter    = 200 * time.Millisecond
	DefaultDirectTimeout = 2 * time.Second
	relayHandshake       = 30 * time.Second // the e2e TLS once the MP has spliced the legs
	greetTimeout         = 15 * time.Second // the device's Hello once the e2e TLS is up
	maxDirect            = 16
)

// Connection is how a session reached the device.
type Connection struct {
	TLS       *tls.Conn     // the end-to-end TLS
	Transport string        // wire.TransportDirect or wire.TransportRelay
	Addr      string        // the device's session port, or the MP's URL
	Took      time.Duration // from Connect to the end-to-end TLS
	// Others are the attempts that lost, with why.
	Others []Attempt
}

// Attempt is one way to the device that did not win.
type Attempt struct {
	Transport string
	Addr      string
	// Reason says why it lost, for people: "connection refused: the port is closed", "no
	// answer to the TLS handshake within 2s", "still waiting when the relay won", …
	Reason string
	// Kind is the reason in one word: "closed" (connection refused), "timeout" (a try ran
	// out of time), "no-answer" (the first try was still unanswered when the other way won),
	// "peer" (the certificate was refused), "slower" (the relay was still waiting), "other"
	// (both came up and the device took the other one),
	// "failed" (anything else), "unused".
	Kind string
	Err  error
}

// Lost says in one line why the other ways lost ("" when there were none).
func (c *Connection) Lost() string {
	var parts []string
	for _, a := range c.Others {
		parts = append(parts, a.Transport+" "+a.Addr+": "+a.Reason)
	}
	return strings.Join(parts, "; ")
}

// leg is one way to the device while Connect runs.
type leg struct {
	transport, addr string
	mu              sync.Mutex
	phase           string // dial, handshake, waiting
	since           time.Time
	err             error
	tries           int
}

func (l *leg) set(phase string) {
	l.mu.Lock()
	l.phase, l.since = phase, time.Now()
	l.mu.Unlock()
}

func (l *leg) fail(err error) {
	l.mu.Lock()
	l.err, l.phase = err, ""
	l.tries++
	l.mu.Unlock()
}

// attempt describes a leg that did not win.
func (l *leg) attempt(timeout time.Duration) Attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := Attempt{Transport: l.transport, Addr: l.addr, Err: l.err}
	if l.err != nil {
		a.Kind, a.Reason = classify(l.err, timeout)
		if l.tries > 1 {
			a.Reason += fmt.Sprintf(" (%d tries)", l.tries)
		}
	}
	if l.err == nil { // still under way when another leg won
		switch l.phase {
		case "dial":
			a.Kind, a.Reason = "no-answer", fmt.Sprintf("the TCP dial had no answer after %s", roundMS(time.Since(l.since)))
		case "handshake":
			a.Kind, a.Reason = "no-answer", fmt.Sprintf("connected, but the TLS handshake had no answer after %s", roundMS(time.Since(l.since)))
		case "waiting":
			a.Kind, a.Reason = "slower", "still waiting for the device when the other way won"
		}
	}
	if a.Kind == "" {
		a.Kind, a.Reason = "unused", "not tried"
	}
	return a
}

func roundMS(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// timeoutError is a try of the session port that ran out of time.
type timeoutError struct {
	phase string
	after time.Duration
}

func (e *timeoutError) Error() string {
	if e.phase == "dial" {
		return fmt.Sprintf("no answer to the TCP dial within %s", e.after)
	}
	return fmt.Sprintf("connected, but no answer to the TLS handshake within %s", e.after)
}

// classify names why a leg failed.
func classify(err error, timeout time.Duration) (kind, reason string) {
	var te *timeoutError
	switch {
	case errors.As(err, &te):
		return "timeout", te.Error()
	case errors.Is(err, syscall.ECONNREFUSED):
		return "closed", "connection refused: the port is closed"
	case errors.Is(err, ErrPeer):
		return "peer", err.Error()
	case errors.Is(err, errTookOther):
		return "other", err.Error()
	}
	return "failed", err.Error()
}

// Connect reaches the device of a session, runs the end-to-end TLS (e2e.HelperConfig: the
// device certificate must name the session's device and chain to the site's roots) and
// exchanges the Hello frames (hello is the helper's: its terminal size).
// When s.Direct lists the device's session port, Connect tries it first (retrying while
// the device has not opened it yet) and starts the relay leg after s.RelayAfterMS, or at
// once when every direct address failed otherwise than refused (a port not open yet). The device serves the first leg whose end-to-end
// TLS it sees complete and closes the others, so the leg on which the device's Hello
// arrives wins, and the helper closes the others. An error answer of the relay (denied,
// consent_timeout, device_offline, …) ends Connect with an *APIError, and an End the device
// sends instead of its Hello with an *EndedError.
func (c *Client) Connect(ctx context.Context, s wire.SessionStart, hello frame.Greeting) (*Session, error) {
	if err := checkStart(s); err != nil {
		return nil, err
	}
	begin := time.Now()
	cfg := e2e.HelperConfig(c.tls.Certificates[0], c.tls.RootCAs, s.Session.Device, c.Now, nil)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// On the relay the MP checks the device's certificate in its handshake; a direct
	// connection has nobody in between, so the helper checks it against the site's CRL
	// itself, and goes without direct when it cannot get one.
	directCfg, crlErr := cfg, error(nil)
	if len(s.Direct) > 0 {
		var crl *x509.RevocationList
		if crl, crlErr = c.CRL(ctx); crlErr == nil {
			directCfg = e2e.HelperConfig(c.tls.Certificates[0], c.tls.RootCAs, s.Session.Device, c.Now, crl)
		}
	}

	type result struct {
		leg  *leg
		sess *Session
		err  error
	}
	var direct []string
	var legs []*leg
	seen := map[string]bool{}
	for _, a := range s.Direct {
		if crlErr != nil {
			l := &leg{transport: wire.TransportDirect, addr: a}
			l.fail(fmt.Errorf("not tried: %w", crlErr))
			legs = append(legs, l)
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil || seen[a] || len(direct) == maxDirect {
			continue
		}
		seen[a] = true
		direct = append(direct, a)
	}
	results := make(chan result, len(direct)+1)
	failedOnce := make(chan struct{}, len(direct))
	relayDone := make(chan struct{})
	var relay *leg
	pending := 0
	startRelay := func() {
		why := directError(legs, c.directTimeout())
		relay = &leg{transport: wire.TransportRelay, addr: c.base}
		legs = append(legs, relay)
		pending++
		go func() {
			sess, err := c.relayLeg(ctx, s, why, cfg, hello, relay)
			results <- result{relay, sess, err}
		}()
	}
	for _, a := range direct {
		l := &leg{transport: wire.TransportDirect, addr: a}
		legs = append(legs, l)
		pending++
		go func() {
			sess, err := c.directLeg(ctx, s.TicketID, directCfg, hello, l, relayDone, failedOnce)
			results <- result{l, sess, err}
		}()
	}
	var relayTimer <-chan time.Time
	if len(direct) == 0 {
		startRelay()
	} else {
		after := time.Duration(s.RelayAfterMS) * time.Millisecond
		if after <= 0 {
			after = DefaultRelayAfter
		}
		t := time.NewTimer(after)
		defer t.Stop()
		relayTimer = t.C
	}
	// drain closes what the legs still running bring once one has won or all is lost.
	drain := func(n int) {
		go func() {
			for range n {
				if r := <-results; r.sess != nil {
					r.sess.Close()
				}
			}
		}()
	}
	failed := 0
	for {
		select {
		case <-relayTimer:
			if relay == nil {
				startRelay()
			}
		case <-failedOnce:
			if failed++; failed == len(direct) && relay == nil {
				startRelay()
			}
		case r := <-results:
			pending--
			if r.leg == relay {
				close(relayDone)
			}
			if r.err == nil {
				// The others as they stand, before the cancel cuts them short.
				conn := &Connection{TLS: r.sess.tls, Transport: r.leg.transport, Addr: r.leg.addr, Took: time.Since(begin)}
				for _, l := range legs {
					if l != r.leg {
						conn.Others = append(conn.Others, l.attempt(c.directTimeout()))
					}
				}
				if relay == nil && len(direct) > 0 {
					conn.Others = append(conn.Others, Attempt{Transport: wire.TransportRelay, Addr: c.base, Kind: "unused", Reason: "not needed: the direct connection came first"})
				}
				cancel()
				drain(pending)
				r.sess.Connection = conn
				return r.sess, nil
			}
			r.leg.fail(r.err)
			var ae *APIError
			var ee *EndedError
			if errors.As(r.err, &ee) || r.leg == relay && (errors.As(r.err, &ae) || errors.Is(r.err, ErrPeer)) {
				cancel()
				drain(pending)
				return nil, r.err
			}
			if pending > 0 {
				continue
			}
			if relay == nil {
				startRelay()
				continue
			}
			var msgs []string
			for _, l := range legs {
				_, reason := classify(l.err, c.directTimeout())
				msgs = append(msgs, l.transport+" "+l.addr+": "+reason)
			}
			return nil, fmt.Errorf("reaching the device failed: %s: %w", strings.Join(msgs, "; "), r.err)
		case <-ctx.Done():
			drain(pending)
			return nil, ctx.Err()
		}
	}
}

// directError says, for the MP's audit, why the direct legs had not reached the device when
// the relay started: wire.DirectTimeout when one had no answer (a dial or handshake under way
// or timed out), else wire.DirectClosed when one was refused, else wire.DirectFailed when one
// failed otherwise; "" without direct legs.
func directError(legs []*leg, timeout time.Duration) string {
	seen := map[string]bool{}
	for _, l := range legs {
		if l.transport != wire.TransportDirect {
			continue
		}
		switch a := l.attempt(timeout); a.Kind {
		case "timeout", "no-answer":
			seen[wire.DirectTimeout] = true
		case "closed":
			seen[wire.DirectClosed] = true
		case "unused", "slower":
		default:
			seen[wire.DirectFailed] = true
		}
	}
	for _, k := range []string{wire.DirectTimeout, wire.DirectClosed, wire.DirectFailed} {
		if seen[k] {
			return k
		}
	}
	return ""
}

func (c *Client) directTimeout() time.Duration {
	if c.DirectTimeout > 0 {
		return c.DirectTimeout
	}
	return DefaultDirectTimeout
}

// directLeg tries the device's session port until it answers, the relay leg is over, or
// the device's certificate is refused. The device opens its port only once the session
// is accepted, so a refused connection is tried again, sooner at first.
func (c *Client) directLeg(ctx context.Context, ticketID string, cfg *tls.Config, hello frame.Greeting, l *leg, relayDone <-chan struct{}, failedOnce chan<- struct{}) (*Session, error) {
	backoff := 20 * time.Millisecond
	for try := 0; ; try++ {
		sess, err := c.directTry(ctx, ticketID, cfg, hello, l)
		if err == nil {
			return sess, nil
		}
		l.fail(err)
		// A refused connection is what a device that has not opened its port yet answers
		// (it does once it has the ticket, or the consent): the relay then starts on its
		// timer, not at once, or it would win every race it should lose.
		if try == 0 && !errors.Is(err, syscall.ECONNREFUSED) {
			failedOnce <- struct{}{}
		}
		var ee *EndedError
		if errors.Is(err, ErrPeer) || errors.Is(err, errTookOther) || errors.As(err, &ee) || ctx.Err() != nil {
			return nil, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-relayDone:
			t.Stop()
			return nil, err
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// directTry is one try of the session port: TCP, the preamble naming the ticket, TLS, the
// Hello frames.
func (c *Client) directTry(ctx context.Context, ticketID string, cfg *tls.Config, hello frame.Greeting, l *leg) (*Session, error) {
	timeout := c.directTimeout()
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := c.DirectDialer
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	l.set("dial")
	raw, err := dial(tctx, "tcp", l.addr)
	if err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return nil, &timeoutError{phase: "dial", after: timeout}
		}
		return nil, err
	}
	l.set("handshake")
	deadline, _ := tctx.Deadline()
	_ = raw.SetDeadline(deadline)
	if err := e2e.WritePreamble(raw, ticketID); err != nil {
		raw.Close()
		return nil, err
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(tctx); err != nil {
		raw.Close()
		var ne net.Error
		if !errors.Is(err, ErrPeer) && ctx.Err() == nil && (tctx.Err() != nil || errors.As(err, &ne) && ne.Timeout()) {
			return nil, &timeoutError{phase: "handshake", after: timeout}
		}
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return greet(ctx, conn, hello)
}

// greet exchanges the Hello frames on a leg whose end-to-end TLS is up. The device sends
// its Hello on the leg it took and closes the others.
func greet(ctx context.Context, conn *tls.Conn, hello frame.Greeting) (*Session, error) {
	gctx, cancel := context.WithTimeout(ctx, greetTimeout)
	defer cancel()
	s, err := Open(gctx, conn, hello)
	if err != nil {
		conn.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, errTookOther
		}
		return nil, err
	}
	s.tls = conn
	return s, nil
}

// relayLeg asks the MP for the helper's leg of the relay (an HTTP/1.1 Upgrade on a mutual-TLS
// connection of its own), waits until the MP splices it to the device's leg, then runs the
// end-to-end TLS over it.
func (c *Client) relayLeg(ctx context.Context, s wire.SessionStart, direct string, cfg *tls.Config, hello frame.Greeting, l *leg) (*Session, error) {
	l.set("waiting")
	q := "/relay?ticket=" + url.QueryEscape(s.TicketID)
	if direct != "" {
		q += "&direct=" + url.QueryEscape(direct)
	}
	u, err := url.Parse(c.base + sessionPath(s.Session.ID) + q)
	if err != nil {
		return nil, err
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	raw, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("relay: dialing the management point: %w", err)
	}
	mcfg := c.tls.Clone()
	mcfg.NextProtos = []string{"http/1.1"}
	if mcfg.ServerName == "" {
		mcfg.ServerName = u.Hostname()
	}
	mp := tls.Client(raw, mcfg)
	// Until the MP answers, a cancelled ctx closes the connection.
	stop := context.AfterFunc(ctx, func() { mp.Close() })
	fail := func(err error) (*Session, error) {
		stop()
		mp.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := mp.HandshakeContext(ctx); err != nil {
		return fail(fmt.Errorf("relay: TLS with the management point: %w", err))
	}
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", wire.RelayProtocol)
	if err := req.Write(mp); err != nil {
		return fail(fmt.Errorf("relay: sending the request: %w", err))
	}
	lim := &headLimit{r: mp, n: maxRelayHead}
	br := bufio.NewReader(lim)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fail(fmt.Errorf("relay: reading the answer of the management point: %w", err))
	}
	lim.n = -1 // the answer's head is read: the stream has no limit
	if resp.StatusCode != http.StatusSwitchingProtocols {
		err := apiError(resp)
		resp.Body.Close()
		return fail(err)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), wire.RelayProtocol) {
		return fail(fmt.Errorf("relay: the management point switched to %q, want %q", resp.Header.Get("Upgrade"), wire.RelayProtocol))
	}
	l.set("handshake")
	hctx, cancel := context.WithTimeout(ctx, relayHandshake)
	defer cancel()
	conn := tls.Client(&bufferedConn{Conn: mp, r: br}, cfg)
	if err := conn.HandshakeContext(hctx); err != nil {
		return fail(fmt.Errorf("relay: end-to-end TLS with the device: %w", err))
	}
	if !stop() { // ctx ended as the handshake completed
		conn.Close()
		return nil, ctx.Err()
	}
	return greet(ctx, conn, hello)
}

// maxRelayHead bounds the head of the MP's answer to a relay leg.
const maxRelayHead = 64 << 10

// headLimit fails reads past n bytes while n >= 0.
type headLimit struct {
	r io.Reader
	n int64
}

func (l *headLimit) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, fmt.Errorf("the answer's head is over %d bytes", maxRelayHead)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// bufferedConn reads what the HTTP answer's reader already holds before the connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
