package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/tlspark"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The relay (DESIGN.md §9 step 4): each ticket has two legs, the device's and the helper's
// (or a viewer's). Both meet at the MP that held the device's notification channel when
// the session started (sessions.device_mp); a helper on another MP reaches it through its
// own MP, which forwards the leg over mutual TLS between the site's MPs (GET /v1/relay/{id}).
// A leg waits until the other is there, then both get 101 and the MP copies raw bytes:
// the end-to-end TLS of remote/e2e, which it cannot read.

// Sides of a relay pair.
const (
	sideDevice = 0
	sideHelper = 1
)

// relayBuf is the copy buffer of one direction of a spliced pair: two per session, so a
// session costs about 2 × relayBuf of buffers plus two goroutine stacks and the two parked
// TLS record layers (which hold no record buffer while idle).
const relayBuf = 8 << 10

// relayAttachWait is how long a leg that got its 101 waits for the other to get its own.
const relayAttachWait = 10 * time.Second

// relayGrace is how long past the consent timeout a leg waits for the other.
const relayGrace = 30 * time.Second

// relays holds this MP's relay pairs by ticket id.
type relays struct {
	m     *MP
	mu    sync.Mutex
	pairs map[string]*relayPair
	// captureDir is where the forwarded bytes are written ($IBCM_RELAY_CAPTURE_DIR), or "".
	captureDir string
}

// relayPair is the two legs of one ticket.
type relayPair struct {
	ticket, session string
	both            chan struct{} // closed when both legs wait
	ended           chan struct{} // closed when the session or this leg ended first
	err             *api.Error    // why it ended, under relays.mu
	waiting         [2]bool       // under relays.mu
	conns           [2]net.Conn   // under relays.mu: the legs after their 101
	spliced         bool          // under relays.mu
	bytes           [2]atomic.Int64
}

func newRelays(m *MP) *relays {
	return &relays{m: m, pairs: map[string]*relayPair{}, captureDir: os.Getenv(RelayCaptureEnv)}
}

// RelayCaptureEnv names a directory where the relay writes every byte it forwards (see the
// package doc): for operators who check that a relay sees only ciphertext.
const RelayCaptureEnv = "IBCM_RELAY_CAPTURE_DIR"

// relayCaptureMax bounds what one capture file takes of a pair's direction: enough to see
// the handshakes and records, while a helper or a device that streams without end cannot
// fill the MP's disk (and the site database with it) once an operator set the capture.
var relayCaptureMax int64 = 16 << 20

// capture opens the file (0600, appended) where one direction of a spliced pair is written
// when captureDir is set, and says how much it holds already; nil otherwise, when it cannot
// be opened (logged) or holds relayCaptureMax.
func (rs *relays) capture(p *relayPair, direction string) (*os.File, int64) {
	if rs.captureDir == "" {
		return nil, 0
	}
	name := filepath.Join(rs.captureDir, p.session+"-"+p.ticket+"-"+direction+".bin")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		rs.m.log.Warn().Err(err).Str("session", p.session).Msg("relay capture")
		return nil, 0
	}
	fi, err := f.Stat()
	if err != nil || fi.Size() >= relayCaptureMax {
		f.Close()
		return nil, 0
	}
	return f, fi.Size()
}

// join registers a waiting leg of ticket.
func (rs *relays) join(ticketID, session string, side int) (*relayPair, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	p := rs.pairs[ticketID]
	if p == nil {
		p = &relayPair{ticket: ticketID, session: session, both: make(chan struct{}), ended: make(chan struct{})}
		rs.pairs[ticketID] = p
	}
	if p.waiting[side] || p.conns[side] != nil {
		return nil, api.Errorf(http.StatusConflict, "leg_taken", "this leg of the session is already connected")
	}
	p.waiting[side] = true
	if p.waiting[0] && p.waiting[1] {
		close(p.both)
	}
	return p, nil
}

// leave takes back a waiting leg that gave up before the other came.
func (rs *relays) leave(p *relayPair, side int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	select {
	case <-p.both:
		return // the other leg counts on this one: attach's timer cleans up
	default:
	}
	p.waiting[side] = false
	if !p.waiting[0] && !p.waiting[1] && rs.pairs[p.ticket] == p {
		delete(rs.pairs, p.ticket)
	}
}

// attach hands over a leg that got its 101; the second one starts the splice. A leg whose
// partner does not follow within relayAttachWait is closed.
func (rs *relays) attach(p *relayPair, side int, c net.Conn) {
	rs.mu.Lock()
	if p.err != nil { // ended meanwhile
		rs.mu.Unlock()
		_ = rawConn(c).Close()
		return
	}
	p.conns[side] = c
	ready := p.conns[0] != nil && p.conns[1] != nil
	if ready {
		p.spliced = true
	}
	rs.mu.Unlock()
	if ready {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rs.m.recordGuestRelay(ctx, p.session, true)
		cancel()
		rs.splice(p)
		return
	}
	time.AfterFunc(relayAttachWait, func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		if !p.spliced {
			rs.closeLocked(p, api.Errorf(http.StatusGone, "session_ended", "the other leg of the session did not connect"))
		}
	})
}

// closeLocked ends a pair: waiting legs wake with err, connected legs are cut.
func (rs *relays) closeLocked(p *relayPair, err *api.Error) {
	if p.err == nil {
		p.err = err
		close(p.ended)
	}
	for _, c := range p.conns {
		if c != nil {
			_ = rawConn(c).Close()
		}
	}
	if rs.pairs[p.ticket] == p {
		delete(rs.pairs, p.ticket)
	}
}

// endSession ends the pairs of a session on this MP (of one ticket when ticketID is not "").
func (rs *relays) endSession(session, ticketID string, err *api.Error) int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	n := 0
	for _, p := range rs.pairs {
		if p.session == session && (ticketID == "" || p.ticket == ticketID) {
			rs.closeLocked(p, err)
			n++
		}
	}
	return n
}

// count is the number of pairs this MP holds (waiting or spliced).
func (rs *relays) count() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.pairs)
}

// endError is the answer to a waiting leg when its session ends with outcome first.
func endError(outcome, code string) *api.Error {
	switch outcome {
	case wire.OutcomeDenied:
		return api.Errorf(http.StatusForbidden, "denied", "the device's user denied the session")
	case wire.OutcomeConsentTimeout:
		return api.Errorf(http.StatusRequestTimeout, "consent_timeout", "the device's user did not answer in time")
	case wire.OutcomeRefused:
		return api.Errorf(http.StatusForbidden, "refused", "the device refused the session (%s)", code)
	case wire.OutcomeOffline:
		return api.Errorf(http.StatusConflict, "device_offline", "the device is offline")
	}
	return api.Errorf(http.StatusGone, "session_ended", "the session has ended")
}

// splice copies both ways until either side ends, then closes both legs and forgets the
// pair. Each direction is one goroutine with one buffer.
func (rs *relays) splice(p *relayPair) {
	var running atomic.Int32
	running.Store(2)
	cp := func(dst, src net.Conn, n *atomic.Int64, direction string) {
		defer func() {
			if running.Add(-1) == 0 { // the last one out records the end
				rs.finish(p)
			}
		}()
		capture, captured := rs.capture(p, direction)
		defer func() {
			if capture != nil {
				capture.Close()
			}
		}()
		buf := make([]byte, relayBuf)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
				n.Add(int64(k))
				if capture != nil {
					w := min(int64(k), relayCaptureMax-captured)
					_, cerr := capture.Write(buf[:w])
					if captured += w; cerr == nil && captured >= relayCaptureMax {
						cerr = fmt.Errorf("the capture stops at %d bytes", relayCaptureMax)
					}
					if cerr != nil {
						rs.m.log.Warn().Err(cerr).Str("session", p.session).Str("direction", direction).Msg("relay capture")
						capture.Close()
						capture = nil
					}
				}
			}
			if err != nil {
				break
			}
		}
		_ = rawConn(dst).Close()
		_ = rawConn(src).Close()
	}
	go cp(p.conns[sideHelper], p.conns[sideDevice], &p.bytes[sideDevice], "from-device")
	go cp(p.conns[sideDevice], p.conns[sideHelper], &p.bytes[sideHelper], "to-device")
}

// finish forgets a spliced pair whose copies have both ended and records its byte counts.
func (rs *relays) finish(p *relayPair) {
	rs.mu.Lock()
	rs.closeLocked(p, api.Errorf(http.StatusGone, "session_ended", "the session has ended"))
	rs.mu.Unlock()
	toDevice, fromDevice := p.bytes[sideHelper].Load(), p.bytes[sideDevice].Load()
	rs.m.log.Info().Str("session", p.session).Int64("bytes_to_device", toDevice).Int64("bytes_from_device", fromDevice).Msg("relay leg closed")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The device reports the session's bytes when it ends; the relay's own count is
	// kept when the device says less (or nothing).
	if _, err := rs.m.db.Exec(ctx, `UPDATE sessions SET
			bytes_in = CASE WHEN bytes_in < ? THEN ? ELSE bytes_in END,
			bytes_out = CASE WHEN bytes_out < ? THEN ? ELSE bytes_out END
		WHERE id = ? AND EXISTS (SELECT 1 FROM session_tickets WHERE id = ? AND role = 'helper')`,
		toDevice, toDevice, fromDevice, fromDevice, p.session, p.ticket); err != nil {
		rs.m.log.Warn().Err(err).Str("session", p.session).Msg("recording the relay's byte counts")
	}
	rs.m.recordGuestRelay(ctx, p.session, false)
}

// checkRelayRequest refuses what is not a relay leg: HTTP/1.1 GET with Upgrade: ibcm-relay
// and a ticket id.
func checkRelayRequest(r *http.Request) (string, error) {
	if r.ProtoMajor != 1 || !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), wire.RelayProtocol) {
		return "", api.Errorf(http.StatusUpgradeRequired, "upgrade_required", "a relay leg is an HTTP/1.1 GET with Connection: Upgrade and Upgrade: %s", wire.RelayProtocol)
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", api.BadRequest("the query is not URL-encoded key=value pairs: %v", err)
	}
	t := q.Get("ticket")
	if len(q["ticket"]) != 1 || !ticket.ValidID(t) {
		return "", api.BadRequest("ticket: one ticket id (32 hex digits) is required")
	}
	if !ticket.ValidID(r.PathValue("id")) {
		return "", api.Errorf(http.StatusNotFound, "not_found", "no session %q", r.PathValue("id"))
	}
	return t, nil
}

// relayDirectError reads the helper leg's direct= (why the device's session port had not
// answered when the helper started the relay): absent, or once one of wire.DirectClosed,
// DirectTimeout, DirectFailed.
func relayDirectError(r *http.Request) (string, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", api.BadRequest("the query is not URL-encoded key=value pairs: %v", err)
	}
	v, ok := q["direct"]
	if !ok {
		return "", nil
	}
	if len(v) == 1 {
		switch v[0] {
		case wire.DirectClosed, wire.DirectTimeout, wire.DirectFailed:
			return v[0], nil
		}
	}
	return "", api.BadRequest("direct: once, one of %s, %s, %s", wire.DirectClosed, wire.DirectTimeout, wire.DirectFailed)
}

// relayLeg reads the ticket and the session of a leg and refuses a session that ended.
func (m *MP) relayLeg(ctx context.Context, sessionID, ticketID string) (*ticketRow, sessionRow, error) {
	t, err := m.ticket(ctx, ticketID)
	if err != nil {
		return nil, sessionRow{}, err
	}
	if t == nil || t.Session != sessionID {
		return nil, sessionRow{}, api.Errorf(http.StatusNotFound, "not_found", "no ticket %q for session %q", ticketID, sessionID)
	}
	s, err := m.session(ctx, sessionID)
	if err != nil {
		return nil, sessionRow{}, err
	}
	return t, s, nil
}

// relayTimeout is how long a leg of s waits for the other.
func (m *MP) relayTimeout(ctx context.Context, device string) time.Duration {
	pol, err := m.devicePolicy(ctx, device)
	if err != nil {
		return defaultConsentTimeout + relayGrace
	}
	return consentTimeout(pol) + relayGrace
}

// handleDeviceRelay is GET /v1/sessions/{id}/relay: the device's leg.
func (m *MP) handleDeviceRelay(w http.ResponseWriter, r *http.Request, p *peer) error {
	ticketID, err := checkRelayRequest(r)
	if err != nil {
		return err
	}
	_, s, err := m.relayLeg(r.Context(), r.PathValue("id"), ticketID)
	if err != nil {
		return err
	}
	if s.Device != p.id.ID {
		return m.auditDevice(r.Context(), p.id.ID, api.Errorf(http.StatusForbidden, "not_your_session", "session %s is not addressed to this device", s.ID))
	}
	if s.DeviceMP != "" && s.DeviceMP != m.o.ID { // the device came to another MP since
		return m.forwardLeg(w, r, s, ticketID, sideDevice)
	}
	return m.waitLeg(w, r, s, ticketID, sideDevice)
}

// handleHelperRelay is GET /v1/admin/sessions/{id}/relay: the helper's (or a viewer's)
// leg, from the very certificate key the ticket names. When the device's MP is another,
// the leg is forwarded there.
func (m *MP) handleHelperRelay(w http.ResponseWriter, r *http.Request, name string) error {
	ticketID, err := checkRelayRequest(r)
	if err != nil {
		return err
	}
	t, s, err := m.relayLeg(r.Context(), r.PathValue("id"), ticketID)
	if err != nil {
		return err
	}
	if t.Helper != name || t.Console || t.HelperKey != trust.PublicKeyHash(peerOf(r).leaf) {
		return m.refuseLeg(r.Context(), s, name, false,
			api.Errorf(http.StatusForbidden, "not_your_ticket", "ticket %s was not issued to this certificate", ticketID))
	}
	if m.now().After(t.ExpiresAt) {
		return api.Errorf(http.StatusGone, "ticket_expired", "ticket %s expired", ticketID)
	}
	directErr, err := relayDirectError(r)
	if err != nil {
		return err
	}
	if directErr != "" && t.Role == "helper" {
		// Recorded before the legs meet; the device's started report clears it when direct won.
		// Only while the session is pending: a started or ended session's record is not the
		// helper's to change (its ticket still lets it dial a leg until the ticket expires).
		if _, err := m.db.Exec(r.Context(), `UPDATE sessions SET direct_error = ? WHERE id = ? AND transport <> ? AND state IN (?, ?)`,
			directErr, s.ID, wire.TransportDirect, wire.SessionRequested, wire.SessionWaiting); err != nil {
			return fmt.Errorf("recording why the direct connection lost: %w", err)
		}
	}
	if s.DeviceMP == "" || s.DeviceMP == m.o.ID {
		return m.waitLeg(w, r, s, ticketID, sideHelper)
	}
	return m.forwardLeg(w, r, s, ticketID, sideHelper)
}

// refuseLeg audits a relay leg of session s that user may not dial as a refused session of
// theirs (through the web console when console) naming the one it is of, and returns e.
func (m *MP) refuseLeg(ctx context.Context, s sessionRow, user string, console bool, e *api.Error) *api.Error {
	m.auditRefusal(ctx, sessionRow{Session: wire.Session{ID: ticket.NewID(), Device: s.Device, DeviceName: s.DeviceName, Helper: user,
		Reason: "relay " + s.ID, Mode: s.Mode, Modes: []wire.SessionMode{}, Location: s.Location, MP: m.o.ID, RequestedAt: m.now().UTC(),
		Console: console}}, wire.OutcomeRefused, e.Code)
	return e
}

// handleForwardedRelay is GET /v1/relay/{id}: a leg that another MP of the site checked
// and forwards: the helper's, or the device's (side=device) when the device reached
// another MP than the one that held its channel at the start.
func (m *MP) handleForwardedRelay(w http.ResponseWriter, r *http.Request) error {
	p := peerOf(r)
	if p.id.Kind != trust.KindServer || p.id.ID != "mp" || p.id.Site != m.siteCode() {
		return api.Errorf(http.StatusForbidden, "not_an_mp", "only a management point of this site forwards relay legs")
	}
	ticketID, err := checkRelayRequest(r)
	if err != nil {
		return err
	}
	side := sideHelper
	switch r.URL.Query().Get("side") {
	case "", "helper":
	case "device":
		side = sideDevice
	default:
		return api.BadRequest("side: helper or device")
	}
	_, s, err := m.relayLeg(r.Context(), r.PathValue("id"), ticketID)
	if err != nil {
		return err
	}
	return m.waitLeg(w, r, s, ticketID, side)
}

// waitLeg holds a leg until the other is there (then 101 and splice), the session ends
// (its outcome's error), the wait times out, or the caller leaves.
func (m *MP) waitLeg(w http.ResponseWriter, r *http.Request, s sessionRow, ticketID string, side int) error {
	wait := m.relayTimeout(r.Context(), s.Device)
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(wait + 10*time.Second)) // the 101 comes after the wait
	_ = rc.SetReadDeadline(time.Time{})
	pair, err := m.awaitPair(r.Context(), s, ticketID, side, wait)
	if err != nil {
		if r.Context().Err() != nil { // the caller left
			return nil
		}
		return err
	}
	conn, err := hijackRelay(w, m)
	if err != nil {
		m.relays.mu.Lock()
		m.relays.closeLocked(pair, api.Errorf(http.StatusGone, "session_ended", "the other leg failed"))
		m.relays.mu.Unlock()
		return nil
	}
	m.relays.attach(pair, side, conn)
	return nil
}

// awaitPair joins the relay pair of ticketID as side and holds it until the other leg is
// there (it returns the pair, for the leg to attach to), the session ends (its outcome's
// error), wait passes, or ctx is done (its cause). On an error the leg is no longer in the
// pair (it left it, or the pair ended).
func (m *MP) awaitPair(ctx context.Context, s sessionRow, ticketID string, side int, wait time.Duration) (*relayPair, error) {
	pair, err := m.relays.join(ticketID, s.ID, side)
	if err != nil {
		return nil, err
	}
	// Joined first, read second: an end announced between the two is not missed.
	cur, err := m.session(ctx, s.ID)
	if err != nil {
		m.relays.leave(pair, side)
		return nil, err
	}
	if cur.State == wire.SessionEnded {
		m.relays.leave(pair, side)
		return nil, endError(cur.Outcome, cur.Error)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-pair.both:
		return pair, nil
	case <-pair.ended:
		m.relays.mu.Lock()
		defer m.relays.mu.Unlock()
		return nil, pair.err
	case <-timer.C:
		m.relays.leave(pair, side)
		other := "the other end of the session"
		if side == sideHelper {
			other = "the device"
		}
		return nil, api.Errorf(http.StatusGatewayTimeout, "relay_timeout", "%s did not connect within %s", other, wait)
	case <-ctx.Done():
		m.relays.leave(pair, side)
		return nil, context.Cause(ctx)
	}
}

// hijackRelay takes the connection of a leg and answers 101. The record layer is parked
// when it can be (TLS 1.3 from a tlspark listener): an idle leg then holds no TLS buffers.
func hijackRelay(w http.ResponseWriter, m *MP) (net.Conn, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, err
	}
	if brw.Reader.Buffered() > 0 { // the leg sent bytes before its 101
		_ = rawConn(conn).Close()
		return nil, errors.New("relay leg sent data before the 101")
	}
	if tc, ok := conn.(*tls.Conn); ok {
		switch pc, err := tlspark.Park(tc); {
		case err == nil:
			conn = pc
		case !errors.Is(err, tlspark.ErrNotParkable):
			_ = rawConn(conn).Close()
			return nil, err
		}
	}
	_ = conn.SetDeadline(time.Time{})
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: "+wire.RelayProtocol+"\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		_ = rawConn(conn).Close()
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// forwardLeg carries a leg (side) to the device's MP, where the legs of a ticket meet: it
// dials that MP's relay with this MP's site-server certificate, waits for its answer, and
// splices the two on a 101 (or passes its error on).
func (m *MP) forwardLeg(w http.ResponseWriter, r *http.Request, s sessionRow, ticketID string, side int) error {
	base, err := m.mpURL(r.Context(), s.DeviceMP)
	if err != nil {
		return err
	}
	wait := m.relayTimeout(r.Context(), s.Device)
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(wait + 20*time.Second))
	_ = rc.SetReadDeadline(time.Time{})
	pair, up, err := m.forwardPair(r.Context(), base, s, ticketID, side, wait)
	if err != nil {
		return err
	}
	conn, err := hijackRelay(w, m)
	if err != nil {
		_ = up.Close()
		m.relays.mu.Lock()
		m.relays.closeLocked(pair, api.Errorf(http.StatusGone, "session_ended", "the helper's leg failed"))
		m.relays.mu.Unlock()
		return nil
	}
	m.relays.attach(pair, 1-side, up)
	m.relays.attach(pair, side, conn)
	return nil
}

// forwardPair opens a leg (side) of ticketID at the device's MP (base), where the legs
// meet, and joins it here too, so that an end of the session closes it on this MP: the
// connection to that MP stands for the other leg, for the caller to attach.
func (m *MP) forwardPair(ctx context.Context, base string, s sessionRow, ticketID string, side int, wait time.Duration) (*relayPair, net.Conn, error) {
	path := "/v1/relay/" + s.ID + "?ticket=" + ticketID
	if side == sideDevice {
		path += "&side=device"
	}
	up, err := m.dialMP(ctx, base, path, wait+10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	pair, err := m.relays.join(ticketID, s.ID, side)
	if err != nil {
		_ = up.Close()
		return nil, nil, err
	}
	m.relays.mu.Lock()
	pair.waiting[1-side] = true // the device's MP stands for the other leg
	m.relays.mu.Unlock()
	return pair, up, nil
}

// mpURL is how this MP reaches another MP of the site: its intranet URL, else its
// internet URL.
func (m *MP) mpURL(ctx context.Context, id string) (string, error) {
	var intranet, internet string
	err := m.db.QueryRow(ctx, `SELECT intranet_url, internet_url FROM management_points WHERE id = ? AND last_seen >= ?`, id, m.aliveSince()).
		Scan(&intranet, &internet)
	if err != nil || intranet == "" && internet == "" {
		return "", api.Errorf(http.StatusConflict, "device_offline", "the management point that holds the device's channel (%s) is not reachable", id)
	}
	if intranet != "" {
		return intranet, nil
	}
	return internet, nil
}

// siteCertificate is this MP's site-server certificate chain and key, as TLS presents them.
func (m *MP) siteCertificate() tls.Certificate {
	cert := tls.Certificate{PrivateKey: m.o.SiteKey}
	for _, c := range m.o.SiteChain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	if len(m.o.SiteChain) > 0 {
		cert.Leaf = m.o.SiteChain[0]
	}
	return cert
}

// siteTLS is this MP's TLS client configuration towards another MP: its own site-server
// certificate as client certificate, and the other's checked against the site's roots
// and the MP role of this site.
func (m *MP) siteTLS() *tls.Config {
	site := m.siteCode()
	return &tls.Config{
		Certificates:       []tls.Certificate{m.siteCertificate()},
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: true, // VerifyConnection checks the chain and the identity instead of a host name
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf, err := m.verifier.Verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id := trust.Identify(leaf); id.Kind != trust.KindServer || id.ID != "mp" || id.Site != site {
				return fmt.Errorf("the peer is %s %q of site %q, not an MP of site %q", id.Kind, id.ID, id.Site, site)
			}
			return nil
		},
	}
}

// dialMP opens a relay leg at another MP and returns the connection after its 101; an
// error answer comes back as the same *api.Error.
func (m *MP) dialMP(ctx context.Context, base, path string, wait time.Duration) (net.Conn, error) {
	if len(m.o.SiteChain) == 0 || m.o.SiteKey == nil {
		return nil, api.Errorf(http.StatusServiceUnavailable, "sessions_unavailable", "this management point has no site-server key to reach the device's")
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("the URL %q of the device's MP: %v", base, err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: m.siteTLS()}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, api.Wrap(err, http.StatusBadGateway, "relay_unreachable", "the device's management point cannot be reached")
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(wait))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nConnection: Upgrade\r\nUpgrade: " + wire.RelayProtocol + "\r\n\r\n"
	br := bufio.NewReaderSize(conn, 1024)
	var resp *http.Response
	if _, err = io.WriteString(conn, req); err == nil {
		resp, err = http.ReadResponse(br, nil)
	}
	if !stop() || err != nil {
		_ = conn.Close()
		if err == nil {
			err = context.Cause(ctx)
		}
		return nil, api.Wrap(err, http.StatusBadGateway, "relay_unreachable", "the device's management point did not answer")
	}
	_ = conn.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		var e wire.Error
		if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<10)).Decode(&e); err != nil || e.Error.Code == "" {
			return nil, api.Errorf(http.StatusBadGateway, "relay_failed", "the device's management point answered %s", resp.Status)
		}
		return nil, api.Errorf(resp.StatusCode, e.Error.Code, "%s", e.Error.Message)
	}
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: conn, r: io.MultiReader(io.LimitReader(br, int64(br.Buffered())), conn)}, nil
	}
	return conn, nil
}

// bufferedConn reads what the response reader held before the connection.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *bufferedConn) NetConn() net.Conn          { return rawConn(c.Conn) }
