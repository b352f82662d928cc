package mp

import (
	"context"
	"crypto/tls"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/ca"
)

// missedRenewal returns a copy's certificate, served and cached by f's MP, once the
// device's renewal of it is recorded as presented at another MP whose announcement did
// not come here.
func missedRenewal(t *testing.T, f *fixture, name string) tls.Certificate {
	t.Helper()
	ctx := context.Background()
	c, csr := testCA(t, f.db)
	req, key := csr()
	chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: name}, req, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	old := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
	if st, e := call(t, f.client(&old), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
		t.Fatalf("the copy's first request: %d %+v", st, e)
	}
	req2, _ := csr()
	chain2, err := c.Renew(ctx, chain[0], req2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Exec(ctx, `INSERT INTO device_certificates (device_id, serial, first_seen) VALUES (?, ?, ?)`,
		deviceID(old), chain2[0].SerialNumber.String(), time.Now().Unix()); err != nil {
		t.Fatal(err)
	}
	return old
}

// A catch-up that cannot read the store (the subscription is back, the query fails) is
// tried again: a copy's channel opened before a renewal this MP missed closes once the
// store answers again. Before, the failed catch-up dropped the cached certificates (the
// copy's next request is refused) but the channel, which makes no request, stayed open
// until the certificate expired, since nothing caught up again until the next reconnect.
// Security review finding; its test.
func TestFailedCatchUpIsRetried(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, sqliteDB(t), Options{})
	old := missedRenewal(t, f, "pc-1")
	ch := live(t, f.intranet, f.client(&old))
	waitConnected(t, f.mp, deviceID(old), 1)

	if _, err := f.db.Exec(ctx, `ALTER TABLE device_certificates RENAME TO device_certificates_away`); err != nil {
		t.Fatal(err)
	}
	f.mp.hub.catchUp(ctx) // as after the subscription reconnects; its query fails
	if _, err := f.db.Exec(ctx, `ALTER TABLE device_certificates_away RENAME TO device_certificates`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ch.done:
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Reason != "certificate superseded" {
			t.Errorf("the copy's channel: %v, want closed with \"certificate superseded\"", err)
		}
	case <-time.After(catchUpRetry + 5*time.Second):
		t.Fatal("the copy's channel is still open: the failed catch-up was not tried again")
	}
}

// A renewal announcement that cannot be checked against the store drops the device's
// cached certificate however many certificates of the device this MP holds (its next
// request asks the store), as supersedeOlder says.
func TestSupersedeOlderStoreErrorDropsCache(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel() // every read of the store fails
	const device = "dev-1"
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	f.mp.hub.trackConn(device, big.NewInt(7), a) // a connection of an older certificate
	defer f.mp.hub.forgetConn(a)
	for i := range 32 { // held serials are visited in map order
		f.mp.seen.Store(device, seenCert{serial: "8", notAfter: time.Now().Add(time.Hour).Unix()})
		if err := f.mp.supersedeOlder(cancelled, device, "9"); err == nil {
			t.Fatal("supersedeOlder read the store with a cancelled context")
		}
		if _, ok := f.mp.seen.Load(device); ok {
			t.Fatalf("attempt %d: the cached certificate stayed after the store could not be read", i)
		}
	}
}

// A catch-up done while the subscription is down (a retry after a failed one, before the
// reconnect) leaves the cache distrusted: renewals presented meanwhile are not heard of
// until the reconnect's catch-up.
func TestCatchUpWhileDownKeepsCacheDistrusted(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	f.mp.hub.down.Store(true) // as on sitedb.Down
	f.mp.eventsLive.Store(false)
	t.Cleanup(func() { f.mp.hub.down.Store(false) })
	f.mp.hub.catchUp(context.Background())
	if f.mp.eventsLive.Load() {
		t.Error("a catch-up while the subscription is down made the cached certificates trusted")
	}
}
