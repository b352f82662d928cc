package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/tlspark"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestNotifyChannelOnCryptoTLS: with parking off (mp.park_idle_channels: false, so
// site.Run serves the MP on a plain crypto/tls listener), a TLS 1.3 channel stays on
// crypto/tls and carries pings, events and the close. TestNotifyChannelParked is the same
// with parking on.
func TestNotifyChannelOnCryptoTLS(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.mp.Configure(srv.Config, wire.Intranet)
	cfg := f.mp.TLSConfig(nil)
	cfg.Certificates = []tls.Certificate{f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp", DNS: []string{"127.0.0.1"}, Role: "mp"})}
	srv.Listener = tls.NewListener(srv.Listener, cfg) // as site.Run serves an MP with parking off
	srv.Start()
	t.Cleanup(srv.Close)

	pc := f.device(t, "pc-1")
	c, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{pc}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Fatalf("%s, want TLS 1.3", tls.VersionName(v))
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, upgradeRequest("")); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	waitConnected(t, f.mp, deviceID(pc), 1)
	f.mp.hub.mu.Lock()
	var nc *notifyConn
	for nc = range f.mp.hub.notify[deviceID(pc)] {
	}
	f.mp.hub.mu.Unlock()
	if _, parked := nc.conn.(*tlspark.Conn); parked {
		t.Fatal("the channel was parked with parking off")
	}
	if _, ok := nc.conn.(*tls.Conn); !ok {
		t.Fatalf("channel on %T, want *tls.Conn", nc.conn)
	}
	if _, err := c.Write(clientFrame(0x89, true, []byte("are you there"))); err != nil {
		t.Fatal(err)
	}
	if op, p, err := serverFrame(br); err != nil || op != opPong || string(p) != "are you there" {
		t.Fatalf("ping answered op %#x %q %v", op, p, err)
	}
	if err := f.mp.Push(context.Background(), deviceID(pc), wire.Event{Type: wire.EventPolicyChanged}); err != nil {
		t.Fatal(err)
	}
	if op, p, err := serverFrame(br); err != nil || op != opText || !strings.Contains(string(p), wire.EventPolicyChanged) {
		t.Fatalf("event arrived as op %#x %q %v", op, p, err)
	}
	if _, err := c.Write(clientFrame(0x88, true, closePayload(closeNormal, "bye"))); err != nil {
		t.Fatal(err)
	}
	expectClose(t, br, closeNormal)
	waitConnected(t, f.mp, deviceID(pc), 0)
}
