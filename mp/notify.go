package mp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// eventsChannel carries siteEvents between the MPs of a site (PostgreSQL LISTEN/NOTIFY, or
// in-process on SQLite). Every admin action goes through it, even on one MP, so there is
// one path for "an admin did something on MP-A" and "a device is connected to MP-B".
const eventsChannel = "ibcm_mp_events"

// Kinds of site event.
const (
	kindPush    = "push"    // deliver Event to Device (or to every device when Device is "")
	kindBlock   = "block"   // Device is blocked: close its connections everywhere
	kindUnblock = "unblock" // Device may connect again (with a new certificate)
	kindGroups  = "groups"  // Device joined or left a group: its policy may differ
	kindPolicy  = "policy"  // Policy has a new version
)

type siteEvent struct {
	Kind   string      `json:"kind"`
	Device string      `json:"device,omitempty"`
	Policy string      `json:"policy,omitempty"`
	Event  *wire.Event `json:"event,omitempty"`
}

// hub holds this MP's live connections by device: notification channels and the
// connections of ordinary requests (so a block can close them all).
type hub struct {
	m       *MP
	mu      sync.Mutex
	notify  map[string]map[*notifyConn]struct{}
	conns   map[string]map[net.Conn]struct{}
	devOf   map[net.Conn]string
	nNotify atomic.Int64
	live    sync.WaitGroup // one per channel still being served
}

func newHub(m *MP) *hub {
	return &hub{m: m, notify: map[string]map[*notifyConn]struct{}{}, conns: map[string]map[net.Conn]struct{}{}, devOf: map[net.Conn]string{}}
}

// publish announces an event to every MP of the site when tx commits.
func (h *hub) publish(tx *sitedb.Tx, ev siteEvent) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	tx.Notify(eventsChannel, string(b))
	return nil
}

// listen subscribes to site events, then loads the blocked devices (so no block can fall
// between the load and the subscription), and dispatches events until ctx is done.
func (h *hub) listen(ctx context.Context) error {
	events, err := h.m.db.Listen(ctx, eventsChannel)
	if err != nil {
		return fmt.Errorf("subscribing to device events: %w", err)
	}
	select {
	case <-events:
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := h.m.loadBlocked(ctx); err != nil {
		return err
	}
	go func() {
		for payload := range events {
			if payload == "" { // reconnected: events may have been missed
				newly, err := h.m.loadBlocked(ctx)
				if err != nil && ctx.Err() == nil {
					h.m.log.Warn().Err(err).Msg("reloading blocked devices")
				}
				for _, id := range newly { // blocks whose events were missed
					h.closeDevice(id)
				}
				h.m.policies.clear("")
				continue
			}
			var ev siteEvent
			if err := json.Unmarshal([]byte(payload), &ev); err != nil {
				h.m.log.Warn().Err(err).Msg("unreadable device event")
				continue
			}
			h.dispatch(ev)
		}
	}()
	return nil
}

func (h *hub) dispatch(ev siteEvent) {
	switch ev.Kind {
	case kindBlock:
		h.m.setBlocked(ev.Device, true)
		n := h.closeDevice(ev.Device)
		h.m.log.Info().Str("device_id", ev.Device).Int("connections", n).Msg("device blocked: connections closed")
	case kindUnblock:
		h.m.setBlocked(ev.Device, false)
	case kindGroups: // only the member's policy can have changed: tell only it
		h.m.policies.forgetDevice(ev.Device)
		h.deliver(ev.Device, wire.Event{Type: wire.EventPolicyChanged, Time: h.m.now().UTC()})
	case kindPolicy:
		h.m.policies.clear(ev.Policy)
		h.deliver("", wire.Event{Type: wire.EventPolicyChanged, Time: h.m.now().UTC(), Data: map[string]string{"policy": ev.Policy}})
	case kindPush:
		if ev.Event != nil {
			h.deliver(ev.Device, *ev.Event)
		}
	}
}

func (h *hub) trackConn(device string, c net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conns[device] == nil {
		h.conns[device] = map[net.Conn]struct{}{}
	}
	h.conns[device][c] = struct{}{}
	h.devOf[c] = device
}

func (h *hub) forgetConn(c net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.devOf[c]; ok {
		delete(h.conns[d], c)
		if len(h.conns[d]) == 0 {
			delete(h.conns, d)
		}
		delete(h.devOf, c)
	}
}

// closeDevice closes every connection of a device on this MP and returns how many.
func (h *hub) closeDevice(device string) int {
	h.mu.Lock()
	var ncs []*notifyConn
	for nc := range h.notify[device] {
		ncs = append(ncs, nc)
	}
	var cs []net.Conn
	for c := range h.conns[device] {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, nc := range ncs {
		go nc.closeWith(closePolicyViolation, "device blocked")
	}
	for _, c := range cs {
		_ = rawConn(c).Close() // no close_notify: it could wait on a slow peer
	}
	return len(ncs) + len(cs)
}

// deliver sends an event to the notification channels of a device, or of every device
// when device is "". Each write runs on its own goroutine with a deadline, so one slow
// device cannot hold up the others.
func (h *hub) deliver(device string, ev wire.Event) {
	b, _ := json.Marshal(ev)
	h.mu.Lock()
	var targets []*notifyConn
	if device == "" {
		for _, set := range h.notify {
			for nc := range set {
				targets = append(targets, nc)
			}
		}
	} else {
		for nc := range h.notify[device] {
			targets = append(targets, nc)
		}
	}
	h.mu.Unlock()
	for _, nc := range targets {
		go nc.write(b)
	}
}

// notifyConn is one device's notification channel: the hijacked TLS connection, and one
// goroutine (serve) reading the device's frames. Writes (events, pings, the close) take
// wmu and a deadline; pings come from a timer, so an idle channel runs nothing else.
type notifyConn struct {
	m        *MP
	conn     net.Conn
	device   string
	id       string
	interval time.Duration
	serial   *big.Int // of the device's certificate: a revocation ends the channel
	ping     *time.Timer
	seen     atomic.Int64 // monotonic nanoseconds of the last frame from the device
	closed   atomic.Bool

	wmu       sync.Mutex
	closeSent bool // under wmu: nothing is written after a close frame

	frames wsFrames // the reader's only buffer
}

// monoBase makes time.Since a monotonic clock for notifyConn.seen.
var monoBase = time.Now()

func mono() int64 { return int64(time.Since(monoBase)) }

func newNotifyConn(m *MP, conn net.Conn, device string, interval time.Duration) *notifyConn {
	nc := &notifyConn{m: m, conn: conn, device: device, id: randomID(), interval: interval}
	nc.seen.Store(mono())
	return nc
}

// writeFrame sends one frame within wsWriteWait.
func (nc *notifyConn) writeFrame(op byte, payload []byte) error {
	frame := appendFrame(make([]byte, 0, 10+len(payload)), op, payload)
	nc.wmu.Lock()
	defer nc.wmu.Unlock()
	if nc.closeSent {
		return errChannelClosed
	}
	if op == opClose {
		nc.closeSent = true
	}
	_ = nc.conn.SetWriteDeadline(time.Now().Add(wsWriteWait))
	_, err := nc.conn.Write(frame)
	_ = nc.conn.SetWriteDeadline(time.Time{})
	return err
}

// write sends an event; a device that cannot take it within the deadline loses its channel.
func (nc *notifyConn) write(b []byte) {
	if err := nc.writeFrame(opText, b); err != nil {
		nc.abort()
	}
}

// closeWith tells the device why its channel ends, and cuts the connection half a second
// later whether or not the device answers the close.
func (nc *notifyConn) closeWith(code uint16, reason string) {
	time.AfterFunc(500*time.Millisecond, nc.abort)
	if err := nc.writeFrame(opClose, closePayload(code, reason)); err != nil {
		nc.abort()
	}
}

// abort cuts the connection under TLS (no close_notify that could block); the reader
// then ends the channel.
func (nc *notifyConn) abort() {
	nc.closed.Store(true)
	_ = rawConn(nc.conn).Close()
}

// pingTick runs on the channel's timer: the device must have sent something (a pong at
// least) within two intervals, then it is pinged again.
func (nc *notifyConn) pingTick() {
	if nc.closed.Load() {
		return
	}
	if rs := nc.m.verifier.Revoked; rs != nil && rs.Contains(nc.serial) {
		nc.closeWith(closePolicyViolation, "certificate revoked")
		return
	}
	if time.Duration(mono()-nc.seen.Load()) >= 2*nc.interval {
		nc.abort()
		return
	}
	if err := nc.writeFrame(opPing, nil); err != nil {
		nc.abort()
		return
	}
	nc.ping.Reset(nc.interval)
}

// converse reads the device's frames until the channel ends: pings are answered, any frame
// counts as a sign of life, a close is answered and ends it, and every other frame ends it
// with a close code saying why. The connection is closed when it returns.
func (nc *notifyConn) converse() {
	defer nc.conn.Close()
	for {
		op, p, err := nc.frames.next(nc.conn)
		if err != nil {
			var fe *frameError
			if errors.As(err, &fe) {
				nc.fail(fe.code, fe.reason)
			}
			return
		}
		nc.seen.Store(mono())
		switch op {
		case opPing:
			if err := nc.writeFrame(opPong, p); err != nil {
				return
			}
		case opClose:
			code, err := parseClose(p)
			var fe *frameError
			if errors.As(err, &fe) {
				nc.fail(fe.code, fe.reason)
				return
			}
			// Answer with the same code (RFC 6455 §5.5.1); when the server began the
			// close, this is the device's answer and there is nothing to say.
			_ = nc.writeFrame(opClose, closePayload(code, ""))
			return
		}
	}
}

// fail sends a close frame with code and ends the TLS stream (close_notify), then reads and
// drops what the device still sends until it hangs up, for a moment, so closing does not
// reset the connection before the device reads why.
func (nc *notifyConn) fail(code uint16, reason string) {
	if err := nc.writeFrame(opClose, closePayload(code, reason)); err != nil {
		return
	}
	if cw, ok := nc.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = nc.conn.SetReadDeadline(time.Now().Add(wsLinger))
	_, _ = io.CopyN(io.Discard, nc.conn, wsLingerBytes)
}

// serve runs the channel on its own goroutine and forgets it when it ends.
func (nc *notifyConn) serve() {
	nc.converse()
	nc.closed.Store(true)
	nc.ping.Stop()
	m, h := nc.m, nc.m.hub
	h.mu.Lock()
	delete(h.notify[nc.device], nc)
	if len(h.notify[nc.device]) == 0 {
		delete(h.notify, nc.device)
	}
	h.mu.Unlock()
	h.nNotify.Add(-1)
	defer h.live.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.db.Exec(ctx, `DELETE FROM notify_connections WHERE conn_id = ?`, nc.id); err != nil {
		m.log.Warn().Err(err).Msg("forgetting notification channel")
	}
}

// closeAll cuts every channel and waits (up to wait) until each has been forgotten.
func (h *hub) closeAll(wait time.Duration) {
	h.mu.Lock()
	var ncs []*notifyConn
	for _, set := range h.notify {
		for nc := range set {
			ncs = append(ncs, nc)
		}
	}
	h.mu.Unlock()
	for _, nc := range ncs {
		nc.abort()
	}
	done := make(chan struct{})
	go func() { h.live.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
	}
}

// handleNotify upgrades to a WebSocket (RFC 6455, ws.go) and hands the connection to one
// goroutine that keeps it until either side ends it, then returns: net/http then drops the
// request, its context and its buffers, and the channel holds only the TLS connection. The
// server pings every PingInterval from a timer and pushes events.
func (m *MP) handleNotify(w http.ResponseWriter, r *http.Request, p *peer) error {
	if m.hub.nNotify.Load() >= int64(m.o.MaxNotify) {
		return api.Errorf(http.StatusServiceUnavailable, "overloaded", "too many notification channels on this management point")
	}
	conn, err := upgrade(w, r, m.log.With().Str("device_id", p.id.ID).Logger())
	if err != nil || conn == nil {
		return err // an *api.Error to answer, or nil when the upgrade failed after the hijack
	}
	nc := newNotifyConn(m, conn, p.id.ID, m.o.PingInterval)
	nc.serial = p.leaf.SerialNumber
	nc.ping = time.AfterFunc(nc.interval, nc.pingTick)
	// In the hub first, so an event sent once the site records the channel reaches it.
	m.hub.nNotify.Add(1)
	m.hub.live.Add(1)
	h := m.hub
	h.mu.Lock()
	if h.notify[nc.device] == nil {
		h.notify[nc.device] = map[*notifyConn]struct{}{}
	}
	h.notify[nc.device][nc] = struct{}{}
	h.mu.Unlock()
	remote, _, _ := net.SplitHostPort(r.RemoteAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.openChannel(ctx, nc, remote); err != nil {
		m.log.Error().Err(err).Str("device_id", nc.device).Msg("recording notification channel")
		nc.abort()
	}
	if m.isBlocked(nc.device) { // a block that raced the upgrade
		nc.abort()
	}
	go nc.serve()
	return nil
}

// openChannel records a notification channel and flags a probable clone when the same
// device is connected from another address at the same time.
func (m *MP) openChannel(ctx context.Context, nc *notifyConn, remote string) error {
	rows, err := m.db.Query(ctx, `SELECT DISTINCT remote_ip FROM notify_connections WHERE device_id = ? AND remote_ip <> ? AND `+liveChannel,
		nc.device, remote, m.aliveSince())
	if err != nil {
		return err
	}
	var others []string
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			rows.Close()
			return err
		}
		others = append(others, ip)
	}
	rows.Close()
	for _, ip := range others {
		msg := fmt.Sprintf("probable clone: the certificate of this device is connected from %s and %s at once", ip, remote)
		m.log.Warn().Str("device_id", nc.device).Str("remote_addr", remote).Str("other_addr", ip).Msg("probable clone")
		if err := m.addWarning(ctx, nc.device, msg); err != nil {
			return err
		}
	}
	_, err = m.db.Exec(ctx, `INSERT INTO notify_connections (conn_id, device_id, mp_id, remote_ip, since) VALUES (?, ?, ?, ?, ?)`,
		nc.id, nc.device, m.o.ID, remote, m.now().Unix())
	return err
}

// Push sends an event to one device (or all when device is ""), wherever it is connected.
func (m *MP) Push(ctx context.Context, device string, ev wire.Event) error {
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		return m.hub.publish(tx, siteEvent{Kind: kindPush, Device: device, Event: &ev})
	})
}

// loadBlocked reads the blocked devices and returns those that were not blocked before.
func (m *MP) loadBlocked(ctx context.Context) ([]string, error) {
	rows, err := m.db.Query(ctx, `SELECT id FROM devices WHERE blocked_at IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	set := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		set[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	var newly []string
	for id := range set {
		if !m.blocked[id] {
			newly = append(newly, id)
		}
	}
	m.blocked = set
	m.mu.Unlock()
	return newly, nil
}
