package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// testClock is the MP's injected clock, moved by the test.
type testClock struct{ off atomic.Int64 }

func (c *testClock) now() time.Time       { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *testClock) move(d time.Duration) { c.off.Add(int64(d)) }
func (c *testClock) moveTo(t time.Time)   { c.move(time.Until(t)) }
func sqliteDB(t testing.TB) *sitedb.DB {
	return sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
}
func deviceCert(id string) *url.URL         { return &url.URL{Scheme: "urn", Opaque: "ibcm:device:" + id} }
func expiredAt(c tls.Certificate) time.Time { return c.Leaf.NotAfter.Add(time.Second) }

// shortLived is a real device certificate of the site's issuing CA that expires at notAfter
// (whole seconds, as X.509 encodes it).
func shortLived(t testing.TB, name string, notAfter time.Time) tls.Certificate {
	t.Helper()
	return handmade(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: notAfter.Truncate(time.Second), URIs: []*url.URL{deviceCert(randomID())},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// request sends one HTTP/1.1 request on a raw connection and reads the answer.
func request(t testing.TB, c io.Writer, br *bufio.Reader, path string) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// A kept-alive connection does not outlive its certificate: the request after NotAfter is
// refused with 403 certificate_expired and the connection is closed.
func TestExpiryEndsKeptAliveConnection(t *testing.T) {
	clock := &testClock{}
	f := newFixture(t, sqliteDB(t), Options{Now: clock.now})
	pc := f.device(t, "pc-1")
	c, br := f.rawConn(t, pc)
	if resp := request(t, c, br, "/v1/whoami"); resp.StatusCode != http.StatusOK {
		t.Fatalf("whoami: %d", resp.StatusCode)
	}
	clock.moveTo(expiredAt(pc))
	if _, err := io.WriteString(c, "GET /v1/whoami HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "certificate_expired") {
		t.Fatalf("after NotAfter: %d %s, want 403 certificate_expired", resp.StatusCode, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the connection stays open after an expired certificate's request (%v)", err)
	}
}

// A notification channel does not outlive its certificate either: the ping after NotAfter
// closes it (moved clock).
func TestExpiryEndsChannelAtPing(t *testing.T) {
	clock := &testClock{}
	f := newFixture(t, sqliteDB(t), Options{Now: clock.now, PingInterval: 100 * time.Millisecond})
	pc := f.device(t, "pc-1")
	ws := dialNotify(t, f, &pc)
	waitConnected(t, f.mp, deviceID(pc), 1)
	clock.moveTo(expiredAt(pc))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := ws.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "certificate expired" {
		t.Fatalf("channel after NotAfter: %v, want close 1008 \"certificate expired\"", err)
	}
	waitConnected(t, f.mp, deviceID(pc), 0)
}

// An idle channel whose certificate expires long before its next ping is cut at NotAfter
// (real clock, a certificate that lives for two or three seconds).
func TestExpiryEndsIdleChannelOnTime(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{PingInterval: time.Hour})
	pc := shortLived(t, "brief", time.Now().Add(3*time.Second))
	_, br := f.rawUpgrade(t, pc)
	op, p, err := serverFrame(br)
	cut := time.Now()
	if err != nil || op != opClose || len(p) < 2 || binary.BigEndian.Uint16(p) != closePolicyViolation || string(p[2:]) != "certificate expired" {
		t.Fatalf("got op %#x %q %v, want a close 1008 \"certificate expired\"", op, p, err)
	}
	if cut.Before(pc.Leaf.NotAfter) || cut.After(pc.Leaf.NotAfter.Add(2*time.Second)) {
		t.Errorf("channel cut at %v, certificate valid until %v", cut.Format(time.StampMilli), pc.Leaf.NotAfter.Format(time.StampMilli))
	}
	waitConnected(t, f.mp, deviceID(pc), 0)
}

// fromAddr is an HTTP client presenting cert whose connections come from ip (127.0.0.x).
func (f *fixture) fromAddr(cert *tls.Certificate, ip string) *http.Client {
	c := f.client(cert)
	c.Transport.(*http.Transport).DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext
	return c
}

// liveChan is a channel that answers pings (as the agent's does: it always reads).
type liveChan struct {
	ws   *websocket.Conn
	done chan error // the error that ended reading
}

func live(t testing.TB, base string, c *http.Client) *liveChan {
	t.Helper()
	l := &liveChan{ws: dialNotifyAt(t, base, c), done: make(chan error, 1)}
	go func() {
		for {
			if _, _, err := l.ws.Read(context.Background()); err != nil {
				l.done <- err
				return
			}
		}
	}()
	return l
}

// closedWith waits for the server to close the channel and returns its reason.
func (l *liveChan) closedWith(t testing.TB) string {
	t.Helper()
	select {
	case err := <-l.done:
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("channel ended without a close frame: %v", err)
		}
		return ce.Reason
	case <-time.After(5 * time.Second):
		t.Fatal("the channel is still open")
		return ""
	}
}

// open reports whether the channel answers a ping.
func (l *liveChan) open() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return l.ws.Ping(ctx) == nil
}

// channelRows lists the conn ids the site records for a device, oldest first.
func channelRows(t testing.TB, db *sitedb.DB, device string) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT conn_id FROM notify_connections WHERE device_id = ? ORDER BY opened_ns, conn_id`, device)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// One certificate holds at most MaxChannelsPerDevice channels: a new one closes the oldest,
// and the site's rows follow.
func TestChannelCapClosesOldest(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc := f.device(t, "pc-1")
	var chans []*liveChan
	for i := range defaultMaxChannelsPerDevice {
		chans = append(chans, live(t, f.intranet, f.client(&pc)))
		waitConnected(t, f.mp, deviceID(pc), i+1)
	}
	first := channelRows(t, f.db, deviceID(pc))
	chans = append(chans, live(t, f.intranet, f.client(&pc)))
	if reason := chans[0].closedWith(t); reason != "too many notification channels for this device" {
		t.Errorf("the oldest channel closed with %q", reason)
	}
	waitConnected(t, f.mp, deviceID(pc), defaultMaxChannelsPerDevice)
	for i, ws := range chans[1:] {
		if !ws.open() {
			t.Errorf("channel %d of %d closed, want only the oldest", i+2, len(chans))
		}
	}
	for _, id := range channelRows(t, f.db, deviceID(pc)) {
		if id == first[0] {
			t.Error("the closed channel still has its row")
		}
	}
}

// The cap counts the channels of every MP: the oldest, held by another MP, is closed there.
func TestChannelCapAcrossMPs(t *testing.T) {
	dsn := sitedbtest.NewDSN(t, sitedb.Postgres)
	a := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-a", MaxChannelsPerDevice: 2})
	b := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-b", MaxChannelsPerDevice: 2})
	pc := a.device(t, "pc-1")
	onB := live(t, b.intranet, b.client(&pc))
	waitConnected(t, a.mp, deviceID(pc), 1)
	onA := live(t, a.intranet, a.client(&pc))
	waitConnected(t, a.mp, deviceID(pc), 2)
	newest := live(t, a.intranet, a.client(&pc))
	if reason := onB.closedWith(t); reason != "too many notification channels for this device" {
		t.Errorf("the oldest channel (on the other MP) closed with %q", reason)
	}
	waitConnected(t, b.mp, deviceID(pc), 2)
	if !onA.open() || !newest.open() {
		t.Error("a channel within the cap was closed")
	}
	if n := b.mp.hub.nNotify.Load(); n != 0 {
		t.Errorf("the other MP still holds %d channels", n)
	}
}

// A device that roams (new address, its old TCP connection silently gone, so the MP still
// holds the old channel) is not a clone: no warning, and the dead channel goes.
func TestRoamingIsNotAClone(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{PingInterval: time.Second})
	pc := f.device(t, "pc-1")
	f.rawUpgrade(t, pc) // from 127.0.0.1, then silent: it answers nothing, as a dropped connection
	live(t, f.intranet, f.fromAddr(&pc, "127.0.0.2"))
	waitConnected(t, f.mp, deviceID(pc), 2)
	waitConnected(t, f.mp, deviceID(pc), 1) // the old channel was found dead
	d, err := f.mp.Device(context.Background(), deviceID(pc))
	if err != nil || len(d.Warnings) != 0 {
		t.Fatalf("a roaming device was flagged: %q %v", d.Warnings, err)
	}
}

// A broadcast reaches every channel through a fixed set of writers. Channels whose writer
// is stuck (a write in progress, as to a device whose TCP send buffer is full: the test
// holds their write lock) hold up neither the others nor a goroutine each: their event
// waits in their queue and goes out once the stuck write ends.
func TestBroadcastFanOutIsBounded(t *testing.T) {
	const n, stuck = 150, 100
	f := newFixture(t, sqliteDB(t), Options{MaxChannelsPerDevice: n})
	pc := f.device(t, "pc-1")
	clients := map[string]*bufio.Reader{} // by the client's address
	for range n {
		c, br := f.rawConn(t, pc)
		if _, err := io.WriteString(c, upgradeRequest("")); err != nil {
			t.Fatal(err)
		}
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		clients[c.LocalAddr().String()] = br
	}
	waitConnected(t, f.mp, deviceID(pc), n)
	f.mp.hub.mu.Lock()
	var held, free []*notifyConn
	for nc := range f.mp.hub.notify[deviceID(pc)] {
		if len(held) < stuck {
			held = append(held, nc)
		} else {
			free = append(free, nc)
		}
	}
	f.mp.hub.mu.Unlock()
	for _, nc := range held {
		nc.wmu.Lock()
	}
	before := runtime.NumGoroutine()
	if err := f.mp.Push(context.Background(), "", wire.Event{Type: wire.EventRedetectLocation}); err != nil {
		t.Fatal(err)
	}
	expectEvent := func(nc *notifyConn) {
		t.Helper()
		br := clients[rawConn(nc.conn).RemoteAddr().String()]
		op, p, err := serverFrame(br)
		if err != nil || op != opText || !strings.Contains(string(p), wire.EventRedetectLocation) {
			t.Fatalf("broadcast arrived as op %#x %q %v", op, p, err)
		}
	}
	for _, nc := range free {
		expectEvent(nc)
	}
	if grown := runtime.NumGoroutine() - before; grown > stuck/2 {
		t.Errorf("%d goroutines more during a broadcast with %d stuck channels: the fan-out is not bounded", grown, stuck)
	}
	for _, nc := range held { // the stuck writes end
		nc.wmu.Unlock()
		nc.flush()
	}
	for _, nc := range held {
		expectEvent(nc)
	}
	waitConnected(t, f.mp, deviceID(pc), n)
}

// A channel that cannot take its queued frames (more than wsMaxQueued wait behind a stuck
// write) is cut rather than holding them.
func TestChannelQueueIsBounded(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc := f.device(t, "pc-1")
	f.rawUpgrade(t, pc)
	f.mp.hub.mu.Lock()
	var nc *notifyConn
	for nc = range f.mp.hub.notify[deviceID(pc)] {
	}
	f.mp.hub.mu.Unlock()
	nc.wmu.Lock()
	for range wsMaxQueued + 1 {
		f.mp.hub.deliver(deviceID(pc), wire.Event{Type: wire.EventPolicyChanged})
	}
	nc.wmu.Unlock()
	waitConnected(t, f.mp, deviceID(pc), 0)
}

func seenCount(m *MP) int {
	n := 0
	m.seen.Range(func(any, any) bool { n++; return true })
	return n
}

// The MP remembers the devices it registered (to skip the database on the next request)
// by one certificate each, and forgets a certificate once it has expired: the set does not
// grow with renewals, nor keep devices whose certificate can no longer connect.
func TestSeenIsBounded(t *testing.T) {
	clock := &testClock{}
	f := newFixture(t, sqliteDB(t), Options{Now: clock.now})
	id := randomID()
	var last tls.Certificate
	for i := range 5 { // one device renewing: a new certificate each time, the same device id
		last = handmade(t, &x509.Certificate{Subject: pkix.Name{CommonName: "renewing"}, NotBefore: time.Now().Add(-time.Minute),
			NotAfter: time.Now().Add(time.Duration(i+1) * time.Hour), URIs: []*url.URL{deviceCert(id)},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if status, _ := call(t, f.client(&last), "GET", f.intranet+"/v1/whoami", nil, nil); status != http.StatusOK {
			t.Fatalf("whoami: %d", status)
		}
	}
	if n := seenCount(f.mp); n != 1 {
		t.Errorf("after 5 certificates of one device the MP remembers %d, want 1", n)
	}
	d, err := f.mp.Device(context.Background(), id)
	if err != nil || d.Serial != wire.FormatSerial(last.Leaf.SerialNumber) {
		t.Errorf("device records certificate %s (%v), want the last one %s", d.Serial, err, last.Leaf.SerialNumber)
	}
	other := f.device(t, "pc-2")
	if status, _ := call(t, f.client(&other), "GET", f.intranet+"/v1/whoami", nil, nil); status != http.StatusOK {
		t.Fatalf("whoami: %d", status)
	}
	if n := seenCount(f.mp); n != 2 {
		t.Errorf("two devices, %d remembered", n)
	}
	clock.moveTo(expiredAt(last))
	f.mp.forgetExpired()
	if n := seenCount(f.mp); n != 1 {
		t.Errorf("after the first device's certificate expired, %d remembered, want 1", n)
	}
	clock.moveTo(expiredAt(other))
	f.mp.forgetExpired()
	if n := seenCount(f.mp); n != 0 {
		t.Errorf("after every certificate expired, %d remembered, want 0", n)
	}
}

// waitWarning waits until the device carries exactly one warning containing want.
func waitWarning(t testing.TB, m *MP, device, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := m.Device(context.Background(), device)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Warnings) == 1 && strings.Contains(d.Warnings[0], want) {
			return
		}
		if len(d.Warnings) > 1 || time.Now().After(deadline) {
			t.Fatalf("warnings %q, want one with %q", d.Warnings, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The same certificate live on two MPs (a clone on the internet, the original on the
// intranet) is flagged too: the probe travels to the MP holding the older channel.
func TestCloneAcrossMPs(t *testing.T) {
	dsn := sitedbtest.NewDSN(t, sitedb.Postgres)
	a := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-a", PingInterval: 3 * time.Second})
	b := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-b", PingInterval: 3 * time.Second})
	pc := a.device(t, "pc-1")
	onA := live(t, a.intranet, a.fromAddr(&pc, "127.0.0.1"))
	waitConnected(t, a.mp, deviceID(pc), 1)
	onB := live(t, b.internet, b.fromAddr(&pc, "127.0.0.3"))
	waitConnected(t, a.mp, deviceID(pc), 2)
	waitWarning(t, b.mp, deviceID(pc), "127.0.0.1 and 127.0.0.3")
	if !onA.open() || !onB.open() {
		t.Error("a clone's channel was closed")
	}
}

// A channel closed for the cap by another MP while this MP missed the event (its listener
// reconnected) is closed when the MP catches up: its row is gone. A row left without its
// channel goes.
func TestMissedCloseIsCaughtUp(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, other := f.device(t, "pc-1"), f.device(t, "pc-2")
	closed, kept := live(t, f.intranet, f.client(&pc)), live(t, f.intranet, f.client(&other))
	waitConnected(t, f.mp, deviceID(pc), 1)
	waitConnected(t, f.mp, deviceID(other), 1)
	// what another MP's openChannel does, without the event reaching this MP
	if _, err := f.db.Exec(context.Background(), `DELETE FROM notify_connections WHERE device_id = ?`, deviceID(pc)); err != nil {
		t.Fatal(err)
	}
	// and a row this MP left behind without its channel (its delete failed)
	if _, err := f.db.Exec(context.Background(), `INSERT INTO notify_connections (conn_id, device_id, mp_id, remote_ip, since, opened_ns)
		VALUES ('stale', ?, ?, '127.0.0.9', 0, 0)`, deviceID(other), f.mp.o.ID); err != nil {
		t.Fatal(err)
	}
	f.mp.hub.catchUp(context.Background())
	if reason := closed.closedWith(t); reason != "too many notification channels for this device" {
		t.Errorf("closed with %q", reason)
	}
	if !kept.open() {
		t.Error("a channel with its row was closed")
	}
	if ids := channelRows(t, f.db, deviceID(other)); len(ids) != 1 || ids[0] == "stale" {
		t.Errorf("rows of the kept channel's device: %q, want its own only", ids)
	}
}

// A clone (the same key and certificate, from another address) that opens channels in a
// burst pushes the real device's channel over the cap before a probe of it reports: the
// real channel answered the probe, so the clone is flagged all the same (the warning was
// lost: the probe saw the channel closed and said nothing). With a cap of one, the clone's
// first channel pushes the real one out without an earlier probe at all. Security review
// finding; its test.
func TestCloneBurstOverCapIsFlagged(t *testing.T) {
	for _, tc := range []struct {
		name string
		cap  int
	}{{"default cap", defaultMaxChannelsPerDevice}, {"cap of one", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, sqliteDB(t), Options{PingInterval: 2 * time.Second, MaxChannelsPerDevice: tc.cap})
			pc := f.device(t, "pc-1")
			real := live(t, f.intranet, f.fromAddr(&pc, "127.0.0.1"))
			waitConnected(t, f.mp, deviceID(pc), 1)
			for range tc.cap {
				live(t, f.intranet, f.fromAddr(&pc, "127.0.0.2"))
			}
			if reason := real.closedWith(t); reason != "too many notification channels for this device" {
				t.Errorf("the real channel closed with %q", reason)
			}
			waitWarning(t, f.mp, deviceID(pc), "probable clone: the certificate of this device is connected from 127.0.0.1 and 127.0.0.2")
		})
	}
}
