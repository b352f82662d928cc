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
	kindClose   = "close"   // channel Conn of Device is beyond the per-device cap: close it
	kindProbe   = "probe"   // Device opened another channel from NewIP: ping channel Conn (from ConnIP)
	// Device presented Successor, a renewal of certificate Serial, for the first time: what
	// an MP holds of an older certificate of its line goes (MP.supersedeOlder).
	kindSuperseded = "superseded"
	// Session ended with Outcome (and the refusal's Code): the MPs close its relay legs, of
	// every ticket, or of Ticket alone (a viewer's leg).
	kindSession = "session"
	// Content or distributions changed: the DP Device (every DP when "") is to fetch its
	// assignments again (content_store.go).
	kindContent = "content"
	// The deployments of group Policy changed: its members' policies differ (deployments.go).
	kindDeploy = "deploy"
)

type siteEvent struct {
	Kind   string      `json:"kind"`
	Device string      `json:"device,omitempty"`
	Policy string      `json:"policy,omitempty"`
	Event  *wire.Event `json:"event,omitempty"`
	Conn   string      `json:"conn,omitempty"`
	ConnIP string      `json:"conn_ip,omitempty"`
	NewIP  string      `json:"new_ip,omitempty"`
	// Serial and Successor are decimal certificate serials.
	Serial    string `json:"serial,omitempty"`
	Successor string `json:"successor,omitempty"`
	Session   string `json:"session,omitempty"`
	Ticket    string `json:"ticket,omitempty"`
	Outcome   string `json:"outcome,omitempty"`
	Code      string `json:"code,omitempty"`
}

// Writers of the channels' queued frames (events, probes): a broadcast to every channel
// costs channelWriters goroutines, not one per channel, and a writer never waits for a
// channel another goroutine is writing to (the frame waits in that channel's queue). A
// writer blocks only on a channel whose TCP send buffer is full, for at most wsWriteWait,
// and that channel is then cut.
const (
	channelWriters = 32
	writerBacklog  = 4096 // channels waiting for a writer before the dispatcher waits
	wsMaxQueued    = 64   // frames waiting on one channel before it is cut as too slow
)

// hub holds this MP's live connections by device: notification channels and the
// connections of ordinary requests (so a block can close them all).
type hub struct {
	m       *MP
	mu      sync.Mutex
	notify  map[string]map[*notifyConn]struct{}
	conns   map[string]map[net.Conn]struct{}
	devOf   map[net.Conn]connOwner
	nNotify atomic.Int64
	live    sync.WaitGroup // one per channel still being served

	jobs chan *notifyConn // channels with queued frames, for the writers
	done <-chan struct{}  // the writers have stopped

	owed     chan struct{} // capacity 1: the event loop is to catch up again (retryLater)
	retrying atomic.Bool   // a retryLater is pending
	down     atomic.Bool   // the subscription lost its connection (sitedb.Down) and is not back
}

func newHub(m *MP) *hub {
	return &hub{m: m, notify: map[string]map[*notifyConn]struct{}{}, conns: map[string]map[net.Conn]struct{}{}, devOf: map[net.Conn]connOwner{},
		jobs: make(chan *notifyConn, writerBacklog), owed: make(chan struct{}, 1)}
}

// startWriters runs the channel writers until ctx is done.
func (h *hub) startWriters(ctx context.Context, wg *sync.WaitGroup) {
	h.done = ctx.Done()
	for range channelWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case nc := <-h.jobs:
					nc.flush()
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}

// send queues a frame on a channel and hands the channel to a writer. It waits only for
// room in the writers' backlog, never for the channel.
func (h *hub) send(nc *notifyConn, frame []byte) {
	if !nc.enqueue(frame) {
		nc.abort() // it cannot keep up
		return
	}
	select {
	case h.jobs <- nc:
	case <-h.done:
	}
}

// channel returns the channel id of device on this MP, or nil.
func (h *hub) channel(device, id string) *notifyConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	for nc := range h.notify[device] {
		if nc.id == id {
			return nc
		}
	}
	return nil
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
// between the load and the subscription), and dispatches events until ctx is done. While
// the subscription has lost its connection (sitedb.Down), the certificates cached in
// MP.seen are not trusted: a renewal presented at another MP meanwhile would not be heard
// of (registerCert asks the store instead).
func (h *hub) listen(ctx context.Context) error {
	events, err := h.m.db.ListenWithDown(ctx, eventsChannel)
	if err != nil {
		return fmt.Errorf("subscribing to device events: %w", err)
	}
	select {
	case <-events:
	case <-ctx.Done():
		return ctx.Err()
	}
	h.m.syncedAt.Store(h.m.now().Unix())
	h.m.eventsLive.Store(true)
	if _, err := h.m.loadBlocked(ctx); err != nil {
		return err
	}
	h.startWriters(ctx, &h.m.bg)
	go func() {
		for {
			var payload string
			select {
			case p, ok := <-events:
				if !ok {
					return
				}
				payload = p
			case <-h.owed: // a catch-up failed, or a renewal could not be checked: again
				h.retrying.Store(false)
				if !h.down.Load() { // else the reconnect's "" catches up
					h.catchUp(ctx)
				}
				continue
			}
			switch payload {
			case sitedb.Down:
				h.down.Store(true)
				h.m.eventsLive.Store(false)
				h.m.log.Warn().Msg("lost the connection that hears of site events; cached device certificates are checked against the store until it is back")
				continue
			case "": // reconnected, or fell behind: events may have been missed
				h.down.Store(false)
				h.catchUp(ctx)
				continue
			}
			var ev siteEvent
			if err := json.Unmarshal([]byte(payload), &ev); err != nil {
				h.m.log.Warn().Err(err).Msg("unreadable device event")
				continue
			}
			h.dispatch(ctx, ev)
		}
	}()
	return nil
}

// catchUp redoes what missed events would have done: blocks, policy changes, the
// channels closed for the per-device cap (their rows are gone), and the renewals
// presented since the last catch-up (MP.resyncSuperseded); then MP.seen is trusted again.
// When the store fails it, the catch-up is done again after catchUpRetry (retryLater):
// the channels a missed event would have closed make no request that could find out.
func (h *hub) catchUp(ctx context.Context) {
	h.m.eventsLive.Store(false) // until the missed renewals are done
	failed := h.m.resyncSuperseded(ctx) != nil
	h.m.eventsLive.Store(!h.down.Load()) // a Down since: not before the reconnect's catch-up
	newly, err := h.m.loadBlocked(ctx)
	if err != nil && ctx.Err() == nil {
		h.m.log.Warn().Err(err).Msg("reloading blocked devices")
		failed = true
	}
	for _, id := range newly { // blocks whose events were missed
		h.closeDevice(id)
	}
	h.m.policies.clear("")
	h.m.feeds.broadcast("", wire.DPEvent{Type: wire.DPEventAssignments}) // content changes may have been missed
	if err := h.reconcile(ctx); err != nil && ctx.Err() == nil {
		h.m.log.Warn().Err(err).Msg("reloading notification channels")
		failed = true
	}
	if failed && ctx.Err() == nil {
		h.retryLater()
	}
}

// catchUpRetry is how long after a failed catch-up it is done again.
const catchUpRetry = 5 * time.Second

// retryLater has the event loop catch up again after catchUpRetry (at most one is
// pending). The loop runs it, so it never races the events it dispatches.
func (h *hub) retryLater() {
	if !h.retrying.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(catchUpRetry, func() {
		select {
		case h.owed <- struct{}{}:
		default:
		}
	})
}

// reconcile makes this MP's channels and its rows agree again: a channel whose row another
// MP deleted (for the cap, in an event this MP missed) is closed, and a row left without
// its channel (its delete failed) is deleted.
func (h *hub) reconcile(ctx context.Context) error {
	// The channels recorded before the query each have a row the query sees, unless it was
	// deleted since; a row the query sees has its channel in the hub after the query,
	// unless that channel has ended (a channel enters the hub before its row is written).
	recorded := h.channels(func(nc *notifyConn) bool { return nc.recorded.Load() })
	rows, err := h.m.db.Query(ctx, `SELECT conn_id FROM notify_connections WHERE mp_id = ?`, h.m.o.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows.Close()
	for _, nc := range recorded {
		if !ids[nc.id] {
			nc.closeOverCap("", "") // who pushed it out is not known here: no probe
		}
	}
	for _, nc := range h.channels(func(*notifyConn) bool { return true }) {
		delete(ids, nc.id)
	}
	for id := range ids {
		if _, err := h.m.db.Exec(ctx, `DELETE FROM notify_connections WHERE conn_id = ?`, id); err != nil {
			return err
		}
	}
	return nil
}

// channels lists this MP's channels that keep says to.
func (h *hub) channels(keep func(*notifyConn) bool) []*notifyConn {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*notifyConn
	for _, set := range h.notify {
		for nc := range set {
			if keep(nc) {
				out = append(out, nc)
			}
		}
	}
	return out
}

func (h *hub) dispatch(ctx context.Context, ev siteEvent) {
	switch ev.Kind {
	case kindSuperseded:
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := h.m.supersedeOlder(cctx, ev.Device, ev.Successor); err != nil && ctx.Err() == nil {
			h.m.log.Warn().Err(err).Str("device_id", ev.Device).Str("successor_serial", wire.FormatDecimalSerial(ev.Successor)).
				Msg("checking the certificates a renewal supersedes; the device's cached certificate was dropped, and a catch-up will close what the renewal supersedes")
			h.retryLater()
		}
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
	case kindContent:
		h.m.feeds.broadcast(ev.Device, wire.DPEvent{Type: wire.DPEventAssignments})
	case kindDeploy:
		h.m.deploymentsChanged(ctx, ev.Policy)
	case kindPush:
		if ev.Event != nil {
			h.deliver(ev.Device, *ev.Event)
		}
	case kindSession:
		h.m.relays.endSession(ev.Session, ev.Ticket, endError(ev.Outcome, ev.Code))
	case kindClose:
		if nc := h.channel(ev.Device, ev.Conn); nc != nil {
			nc.closeOverCap(ev.ConnIP, ev.NewIP)
		}
	case kindProbe:
		if nc := h.channel(ev.Device, ev.Conn); nc != nil {
			nc.probe(ev.ConnIP, ev.NewIP)
		}
	}
}

// connOwner is who a tracked request connection belongs to: the device, and the serial
// of the certificate its handshake presented.
type connOwner struct {
	device string
	serial *big.Int
}

func (h *hub) trackConn(device string, serial *big.Int, c net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conns[device] == nil {
		h.conns[device] = map[net.Conn]struct{}{}
	}
	h.conns[device][c] = struct{}{}
	h.devOf[c] = connOwner{device: device, serial: serial}
}

func (h *hub) forgetConn(c net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if o, ok := h.devOf[c]; ok {
		d := o.device
		delete(h.conns[d], c)
		if len(h.conns[d]) == 0 {
			delete(h.conns, d)
		}
		delete(h.devOf, c)
	}
}

// closeSerial ends this MP's connections that present the certificate serial (decimal),
// which was just revoked (trust.RevokedSet.OnRevoke): its notification channels with a
// close saying why, its tracked request connections at once. A connection that joins the
// hub after this looks at the revoked set itself (handleNotify, gate), so none is missed.
func (h *hub) closeSerial(serial string) {
	sn, ok := new(big.Int).SetString(serial, 10)
	if !ok {
		return
	}
	n := h.closeChannels("", sn, "certificate revoked") + h.closeConns("", sn)
	if n > 0 {
		h.m.log.Info().Str("serial", wire.FormatSerial(sn)).Int("connections", n).Msg("certificate revoked: connections closed")
	}
}

// closeConns cuts this MP's tracked request connections that present the certificate
// serial (of device, or of any device when device is "") and returns how many.
func (h *hub) closeConns(device string, serial *big.Int) int {
	h.mu.Lock()
	var cs []net.Conn
	match := func(c net.Conn) {
		if o := h.devOf[c]; o.serial != nil && o.serial.Cmp(serial) == 0 {
			cs = append(cs, c)
		}
	}
	if device != "" {
		for c := range h.conns[device] {
			match(c)
		}
	} else {
		for c := range h.devOf {
			match(c)
		}
	}
	h.mu.Unlock()
	for _, c := range cs {
		_ = rawConn(c).Close() // no close_notify: it could wait on a slow peer
	}
	return len(cs)
}

// serialsOf returns the serials (decimal) of the certificates that device's notification
// channels and tracked request connections on this MP presented.
func (h *hub) serialsOf(device string) map[string]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]bool{}
	for nc := range h.notify[device] {
		if nc.serial != nil {
			out[nc.serial.String()] = true
		}
	}
	for c := range h.conns[device] {
		if o := h.devOf[c]; o.serial != nil {
			out[o.serial.String()] = true
		}
	}
	return out
}

// closeChannels closes this MP's notification channels that present the certificate
// serial (of device, or of any device when device is ""), telling why, and returns how
// many.
func (h *hub) closeChannels(device string, serial *big.Int, reason string) int {
	h.mu.Lock()
	var ncs []*notifyConn
	for d, set := range h.notify {
		if device != "" && d != device {
			continue
		}
		for nc := range set {
			if nc.serial != nil && nc.serial.Cmp(serial) == 0 {
				ncs = append(ncs, nc)
			}
		}
	}
	h.mu.Unlock()
	for _, nc := range ncs {
		go nc.closeWith(closePolicyViolation, reason)
	}
	return len(ncs)
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
// when device is "", through the writers: one slow device cannot hold up the others.
func (h *hub) deliver(device string, ev wire.Event) {
	b, _ := json.Marshal(ev)
	frame := appendFrame(nil, opText, b) // one for every channel: writers only read it
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
		h.send(nc, frame)
	}
}

// notifyConn is one device's notification channel: the hijacked TLS connection, and one
// goroutine (serve) reading the device's frames. Writes (events, pings, the close) take
// wmu and a deadline; events wait in queue for whoever writes next. Pings come from a
// timer, so an idle channel runs nothing else.
type notifyConn struct {
	m        *MP
	conn     net.Conn
	device   string
	id       string
	interval time.Duration
	serial   *big.Int // of the device's certificate: a revocation ends the channel
	notAfter int64    // of that certificate, unix seconds: so does its expiry
	ping     *time.Timer
	seen     atomic.Int64 // monotonic nanoseconds of the last frame from the device
	closed   atomic.Bool
	recorded atomic.Bool // the site has its row (notify_connections)

	wmu   sync.Mutex
	qmu   sync.Mutex
	queue [][]byte // under qmu: frames for the next writer; nil when none

	frames    wsFrames // the reader's only buffer
	closeSent bool     // under wmu: nothing is written after a close frame (last: it packs after frames)
}

// monoBase makes time.Since a monotonic clock for notifyConn.seen.
var monoBase = time.Now()

func mono() int64 { return int64(time.Since(monoBase)) }

func newNotifyConn(m *MP, conn net.Conn, device string, interval time.Duration) *notifyConn {
	nc := &notifyConn{m: m, conn: conn, device: device, id: randomID(), interval: interval}
	nc.seen.Store(mono())
	return nc
}

// writeFrame sends the frames queued so far and then one frame, each within wsWriteWait,
// then what was queued meanwhile: frames go out in the order they were given, so a probe's
// ping precedes the close that follows it.
func (nc *notifyConn) writeFrame(op byte, payload []byte) error {
	frame := appendFrame(make([]byte, 0, 10+len(payload)), op, payload)
	nc.wmu.Lock()
	var err error
	for _, f := range append(nc.takeQueue(), frame) {
		if err = nc.writeLocked(f); err != nil {
			break
		}
	}
	nc.wmu.Unlock()
	nc.flush()
	return err
}

// writeLocked sends one frame within wsWriteWait; the caller holds wmu.
func (nc *notifyConn) writeLocked(frame []byte) error {
	if nc.closeSent {
		return errChannelClosed
	}
	if frame[0]&0x0F == opClose {
		nc.closeSent = true
	}
	_ = nc.conn.SetWriteDeadline(time.Now().Add(wsWriteWait))
	_, err := nc.conn.Write(frame)
	_ = nc.conn.SetWriteDeadline(time.Time{})
	return err
}

// enqueue adds a frame for the next writer; false when the channel has too many waiting.
func (nc *notifyConn) enqueue(frame []byte) bool {
	nc.qmu.Lock()
	defer nc.qmu.Unlock()
	if len(nc.queue) >= wsMaxQueued {
		return false
	}
	nc.queue = append(nc.queue, frame)
	return true
}

func (nc *notifyConn) takeQueue() [][]byte {
	nc.qmu.Lock()
	defer nc.qmu.Unlock()
	q := nc.queue
	nc.queue = nil
	return q
}

func (nc *notifyConn) queued() bool {
	nc.qmu.Lock()
	defer nc.qmu.Unlock()
	return len(nc.queue) > 0
}

// flush writes the queued frames unless another goroutine is writing to the channel: every
// writer flushes after it lets go of wmu, so that one writes them. A device that cannot
// take a frame within the deadline loses its channel.
func (nc *notifyConn) flush() {
	for nc.queued() && nc.wmu.TryLock() {
		var err error
		for _, f := range nc.takeQueue() {
			if err = nc.writeLocked(f); err != nil {
				break
			}
		}
		nc.wmu.Unlock()
		if errors.Is(err, errChannelClosed) {
			nc.takeQueue() // closing: nothing more goes out
			return
		}
		if err != nil {
			nc.abort()
			return
		}
	}
}

// pingFrame is a server ping without payload, shared by every probe.
var pingFrame = appendFrame(nil, opPing, nil)

// probe tells a clone from a roaming device, once the device opened another channel from
// newIP while this one (from ip) is open. A roaming device's old channel is dead or dying:
// its TCP connection is gone, and the MP may not know yet. A clone's answers. So the
// channel is pinged: any frame from it within the probe wait (the pong, or the answer to a
// ping of the timer) flags a probable clone, even when the channel was closed meanwhile (a
// clone's burst of channels can push the real device's over the cap); both channels stay
// otherwise: flagged, not merged. Silence cuts it. A close frame is no answer (converse
// does not count it).
func (nc *notifyConn) probe(ip, newIP string) {
	start := mono()
	nc.m.hub.send(nc, pingFrame)
	time.AfterFunc(nc.m.probeWait(), func() {
		log := nc.m.log.With().Str("device_id", nc.device).Str("remote_addr", newIP).Str("other_addr", ip).Logger()
		if nc.seen.Load() <= start {
			if !nc.closed.Load() {
				log.Info().Msg("notification channel silent since the device connected from another address: closed")
				nc.abort()
			}
			return
		}
		log.Warn().Msg("probable clone")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		msg := fmt.Sprintf("probable clone: the certificate of this device is connected from %s and %s at once", ip, newIP)
		if err := nc.m.addWarning(ctx, nc.device, msg); err != nil {
			log.Error().Err(err).Msg("recording a clone warning")
		}
	})
}

// probeWait is how long a probed channel has to answer: as long as a ping interval, at most
// as long as a frame may take to write.
func (m *MP) probeWait() time.Duration { return min(m.o.PingInterval, wsWriteWait) }

// closeOverCap closes a channel (from ip) that its device's newer ones (the newest from
// newIP) pushed over the cap. When they come from another address, the channel is probed
// on its way out (its ping goes before the close): a roaming device's old channel answers
// nothing, but one that answers is another holder of the certificate, and a clone that
// pushes the real device's channel out must not go unreported. ip and newIP are "" when
// unknown.
func (nc *notifyConn) closeOverCap(ip, newIP string) {
	nc.m.log.Info().Str("device_id", nc.device).Msg("notification channel closed: the device has too many")
	if newIP != "" && newIP != ip {
		nc.probe(ip, newIP)
	}
	go nc.closeWith(closePolicyViolation, "too many notification channels for this device")
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

// expired reports whether the channel's certificate has expired at now.
func (nc *notifyConn) expired(now time.Time) bool { return now.After(time.Unix(nc.notAfter, 0)) }

// nextTick is how long until the channel's timer fires again: a ping interval, or just
// past the certificate's NotAfter when that comes first, so an idle channel is cut on time
// without a timer of its own.
func (nc *notifyConn) nextTick(now time.Time) time.Duration {
	if left := time.Unix(nc.notAfter, 0).Sub(now) + time.Millisecond; left < nc.interval {
		return left
	}
	return nc.interval
}

// pingTick runs on the channel's timer: a revoked or expired certificate ends the channel;
// otherwise the device must have sent something (a pong at least) within two intervals,
// then it is pinged again.
func (nc *notifyConn) pingTick() {
	if nc.closed.Load() {
		return
	}
	if nc.m.isRevoked(nc.serial) { // a backstop: closeSerial closes it when the revocation is announced
		nc.closeWith(closePolicyViolation, "certificate revoked")
		return
	}
	now := nc.m.now()
	if nc.expired(now) {
		nc.closeWith(closePolicyViolation, "certificate expired")
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
	nc.ping.Reset(nc.nextTick(now))
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
		if op != opClose { // answering our close is no sign of life (see probe)
			nc.seen.Store(mono())
		}
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
	nc.serial, nc.notAfter = p.leaf.SerialNumber, p.leaf.NotAfter.Unix()
	nc.ping = time.AfterFunc(nc.nextTick(m.now()), nc.pingTick)
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
	} else {
		nc.recorded.Store(true)
	}
	if m.isBlocked(nc.device) || m.isRevoked(nc.serial) { // a block or revocation that raced the upgrade
		nc.abort()
	}
	// A renewal announced since registerDevice let the channel in may have been handled
	// before the channel joined the hub: then it dropped the certificate from MP.seen
	// (supersedeOlder, or registerCert after it), and the store decides again.
	if v, ok := m.seen.Load(nc.device); !ok || v.(seenCert).serial != nc.serial.String() {
		if err := m.registerCert(ctx, p); errors.Is(err, ErrCertificateSuperseded) {
			go nc.closeWith(closePolicyViolation, "certificate superseded")
		}
	}
	go nc.serve()
	return nil
}

// openChannel records a notification channel. Beyond the device's cap, its oldest
// channels (on any MP) are forgotten and closed. Each other channel of the device from
// another address is probed: a clone holds two live channels, a roaming device a live one
// and a dead one.
func (m *MP) openChannel(ctx context.Context, nc *notifyConn, remote string) error {
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		// The device's row lock makes its channels open one at a time across the site, so
		// two MPs cannot both stay under the cap.
		if _, err := tx.Exec(`UPDATE devices SET last_seen = last_seen WHERE id = ?`, nc.device); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO notify_connections (conn_id, device_id, mp_id, remote_ip, since, opened_ns) VALUES (?, ?, ?, ?, ?, ?)`,
			nc.id, nc.device, m.o.ID, remote, m.now().Unix(), m.now().UnixNano()); err != nil {
			return err
		}
		rows, err := tx.Query(`SELECT conn_id, remote_ip FROM notify_connections WHERE device_id = ? AND conn_id <> ?
			ORDER BY opened_ns DESC, conn_id DESC`, nc.device, nc.id)
		if err != nil {
			return err
		}
		var others []siteEvent // newest first
		for rows.Next() {
			ev := siteEvent{Device: nc.device, NewIP: remote}
			if err := rows.Scan(&ev.Conn, &ev.ConnIP); err != nil {
				rows.Close()
				return err
			}
			others = append(others, ev)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for i, ev := range others {
			switch {
			case i+1 >= m.o.MaxChannelsPerDevice: // with the new one, over the cap
				if _, err := tx.Exec(`DELETE FROM notify_connections WHERE conn_id = ?`, ev.Conn); err != nil {
					return err
				}
				ev.Kind = kindClose
			case ev.ConnIP != remote:
				ev.Kind = kindProbe
			default:
				continue
			}
			if err := m.hub.publish(tx, ev); err != nil {
				return err
			}
		}
		return nil
	})
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
	var newly, unblocked []string
	for id := range set {
		if !m.blocked[id] {
			newly = append(newly, id)
		}
	}
	for id := range m.blocked {
		if !set[id] {
			unblocked = append(unblocked, id)
		}
	}
	m.blocked = set
	m.mu.Unlock()
	for _, id := range newly {
		m.blockChanged(id, true)
	}
	for _, id := range unblocked {
		m.blockChanged(id, false)
	}
	return newly, nil
}
