package mp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

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
	kindGroups  = "groups"  // group membership or group policy changed
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
	if err := h.m.loadBlocked(ctx); err != nil {
		return err
	}
	go func() {
		for payload := range events {
			if payload == "" { // reconnected: events may have been missed
				if err := h.m.loadBlocked(ctx); err != nil && ctx.Err() == nil {
					h.m.log.Warn().Err(err).Msg("reloading blocked devices")
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
	case kindGroups:
		h.m.policies.clear("")
		h.deliver("", wire.Event{Type: wire.EventPolicyChanged, Time: h.m.now().UTC()})
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
		// Say why, then cut the connection whether or not the device answers the close.
		go func() { _ = nc.ws.Close(websocket.StatusPolicyViolation, "device blocked") }()
		time.AfterFunc(500*time.Millisecond, func() { nc.net.Close() })
	}
	for _, c := range cs {
		c.Close()
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

// notifyConn is one device's notification channel.
type notifyConn struct {
	ws     *websocket.Conn
	net    net.Conn
	device string
	id     string
	ping   *time.Timer
}

func (nc *notifyConn) write(b []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nc.ws.Write(ctx, websocket.MessageText, b); err != nil {
		nc.net.Close()
	}
}

// handleNotify upgrades to a WebSocket and keeps it until either side ends it. The server
// pings every PingInterval from a timer (no goroutine while idle) and pushes events.
func (m *MP) handleNotify(w http.ResponseWriter, r *http.Request, p *peer) error {
	if m.hub.nNotify.Load() >= int64(m.o.MaxNotify) {
		return api.Errorf(http.StatusServiceUnavailable, "overloaded", "too many notification channels on this management point")
	}
	tc, _ := r.Context().Value(connKey{}).(*trackedConn)
	if tc == nil {
		return api.Errorf(http.StatusInternalServerError, "internal", "connection not tracked")
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil // Accept has answered the request
	}
	// The http.Server's request deadlines stay on a hijacked connection; this one lives on.
	_ = tc.Conn.SetDeadline(time.Time{})
	ws.SetReadLimit(1024)
	nc := &notifyConn{ws: ws, net: tc.Conn, device: p.id.ID, id: randomID()}
	// In the hub first, so an event sent once the site records the channel reaches it.
	m.hub.nNotify.Add(1)
	h := m.hub
	h.mu.Lock()
	if h.notify[nc.device] == nil {
		h.notify[nc.device] = map[*notifyConn]struct{}{}
	}
	h.notify[nc.device][nc] = struct{}{}
	h.mu.Unlock()
	remote, _, _ := net.SplitHostPort(r.RemoteAddr)
	if err := m.openChannel(r.Context(), nc, remote); err != nil {
		m.log.Error().Err(err).Str("device_id", nc.device).Msg("recording notification channel")
		nc.net.Close()
	}
	blocked := m.isBlocked(nc.device) // a block that raced the upgrade
	var ping func()
	ping = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := ws.Ping(ctx); err != nil {
			nc.net.Close()
			return
		}
		nc.ping.Reset(m.o.PingInterval)
	}
	nc.ping = time.AfterFunc(m.o.PingInterval, ping)

	if blocked {
		nc.net.Close()
	}
	<-ws.CloseRead(context.Background()).Done()

	nc.ping.Stop()
	h.mu.Lock()
	delete(h.notify[nc.device], nc)
	if len(h.notify[nc.device]) == 0 {
		delete(h.notify, nc.device)
	}
	h.mu.Unlock()
	m.hub.nNotify.Add(-1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.db.Exec(ctx, `DELETE FROM notify_connections WHERE conn_id = ?`, nc.id); err != nil {
		m.log.Warn().Err(err).Msg("forgetting notification channel")
	}
	return nil
}

// openChannel records a notification channel and flags a probable clone when the same
// device is connected from another address at the same time.
func (m *MP) openChannel(ctx context.Context, nc *notifyConn, remote string) error {
	rows, err := m.db.Query(ctx, `SELECT DISTINCT remote_ip FROM notify_connections WHERE device_id = ? AND remote_ip <> ?`, nc.device, remote)
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

// loadBlocked reads the blocked devices.
func (m *MP) loadBlocked(ctx context.Context) error {
	rows, err := m.db.Query(ctx, `SELECT id FROM devices WHERE blocked_at IS NOT NULL`)
	if err != nil {
		return err
	}
	defer rows.Close()
	set := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		set[id] = true
	}
	m.mu.Lock()
	m.blocked = set
	m.mu.Unlock()
	return rows.Err()
}
