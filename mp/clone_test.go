package mp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestRefusedRenewalWarnsDevice: the CA refuses a renewal of an already renewed
// certificate for another key while no MP runs; an MP started afterwards shows the clone
// warning on the device.
func TestRefusedRenewalWarnsDevice(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-7"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		old := chain[0]
		real, _ := csr()
		if _, err := c.Renew(ctx, old, real); err != nil {
			t.Fatalf("the real device's renewal: %v", err)
		}
		copied, _ := csr()
		if _, err := c.Renew(ctx, old, copied); !errors.Is(err, ca.ErrRenewalSuperseded) {
			t.Fatalf("the copy's renewal = %v, want ErrRenewalSuperseded", err)
		}

		f := newFixture(t, db, Options{})
		cert := tls.Certificate{Certificate: [][]byte{old.Raw, chain[1].Raw}, PrivateKey: key, Leaf: old}
		if status, e := call(t, f.client(&cert), "GET", f.intranet+"/v1/whoami", nil, &wire.Whoami{}); status != 200 {
			t.Fatalf("whoami: %d %+v", status, e)
		}
		id := deviceID(cert)
		d, err := f.mp.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone") || !strings.Contains(d.Warnings[0], wire.FormatSerial(old.SerialNumber)) {
			t.Errorf("device warnings = %q, want one clone warning naming %s", d.Warnings, wire.FormatSerial(old.SerialNumber))
		}
		all, err := f.mp.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, dev := range all {
			if dev.ID == id && len(dev.Warnings) != 1 {
				t.Errorf("device list: warnings %q", dev.Warnings)
			}
		}
	})
}

// TestSupersededCertificateRefused: once the device presented the renewal C1 of its
// certificate C0 at an MP, C0 is refused with 403 certificate_superseded and the device is
// warned of a clone (a copy that never renews keeps using C0; the MP accepted it silently).
// A channel C0 opened before is closed as soon as C1 is presented. C0 works until then:
// the agent may not have received its renewal yet. A second MP process, without its
// cache, refuses C0 too. Security review finding; its test.
func TestSupersededCertificateRefused(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) { testSupersededCertificateRefused(t, db) })
}

func testSupersededCertificateRefused(t *testing.T, db *sitedb.DB) {
	ctx := context.Background()
	c, csr := testCA(t, db)
	req, key := csr()
	chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-7"}, req, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	req2, key2 := csr()
	chain2, err := c.Renew(ctx, chain[0], req2)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, db, Options{})
	oldCert := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
	newCert := tls.Certificate{Certificate: [][]byte{chain2[0].Raw, chain2[1].Raw}, PrivateKey: key2, Leaf: chain2[0]}
	id := deviceID(oldCert)
	whoami := func(f *fixture, cert *tls.Certificate, path string) (int, wire.Error) {
		t.Helper()
		return call(t, f.client(cert), "GET", f.intranet+path, nil, nil)
	}
	if st, e := whoami(f, &oldCert, "/v1/whoami"); st != 200 {
		t.Fatalf("the old certificate before the renewal reached an MP: %d %+v", st, e)
	}
	copyChannel := live(t, f.intranet, f.client(&oldCert))
	waitConnected(t, f.mp, id, 1)
	if st, e := whoami(f, &newCert, "/v1/whoami"); st != 200 {
		t.Fatalf("the renewed certificate: %d %+v", st, e)
	}
	// Closed once the renewal is presented, before the copy asks anything again.
	if reason := copyChannel.closedWith(t); reason != "certificate superseded" {
		t.Errorf("the channel of the superseded certificate closed with %q", reason)
	}
	for _, path := range []string{"/v1/whoami", "/v1/policy", "/v1/notify", "/v1/whoami"} {
		st, e := whoami(f, &oldCert, path)
		if st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
			t.Errorf("the superseded certificate at %s: %d %+v, want 403 certificate_superseded", path, st, e)
		}
	}
	d, err := f.mp.Device(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone") || !strings.Contains(d.Warnings[0], wire.FormatSerial(oldCert.Leaf.SerialNumber)) {
		t.Errorf("device warnings = %q, want one clone warning naming %s", d.Warnings, wire.FormatSerial(oldCert.Leaf.SerialNumber))
	}
	if st, e := whoami(f, &newCert, "/v1/policy"); st != 200 {
		t.Errorf("the renewed certificate after the clone was refused: %d %+v", st, e)
	}
	other := newFixture(t, db, Options{ID: "mp-other"})
	if st, e := whoami(other, &oldCert, "/v1/whoami"); st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
		t.Errorf("the superseded certificate at another MP: %d %+v, want 403 certificate_superseded", st, e)
	}
}

// When the copy renewed first, the real device's renewal is refused (renewal_superseded)
// and the line is contested: its older certificate is not refused, or the copy would lock
// the real device out. The device is flagged and both keep working until an admin acts.
func TestContestedLineNotRefused(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-8"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, db, Options{})
		device := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
		if st, e := call(t, f.client(&device), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the device before any renewal: %d %+v", st, e)
		}
		// The copy renews first and presents its renewal.
		copyReq, copyKey := csr()
		copyChain, err := c.Renew(ctx, chain[0], copyReq)
		if err != nil {
			t.Fatal(err)
		}
		clone := tls.Certificate{Certificate: [][]byte{copyChain[0].Raw, copyChain[1].Raw}, PrivateKey: copyKey, Leaf: copyChain[0]}
		if st, e := call(t, f.client(&clone), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the copy's renewal: %d %+v", st, e)
		}
		// The real device's renewal is refused: the line is contested.
		realReq, _ := csr()
		if _, err := c.Renew(ctx, chain[0], realReq); !errors.Is(err, ca.ErrRenewalSuperseded) {
			t.Fatalf("the real device's renewal after the copy's: %v, want renewal_superseded", err)
		}
		for _, mp := range []*fixture{f, newFixture(t, db, Options{ID: "mp-other"})} {
			if st, e := call(t, mp.client(&device), "GET", mp.intranet+"/v1/policy", nil, nil); st != 200 {
				t.Errorf("the real device's certificate on a contested line: %d %+v, want 200", st, e)
			}
		}
		d, err := f.mp.Device(ctx, deviceID(device))
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Warnings) == 0 || !strings.Contains(strings.Join(d.Warnings, "\n"), "probable clone") {
			t.Errorf("a contested line raised no clone warning: %q", d.Warnings)
		}
	})
}

// testCA is a CA of site TST on db and a maker of CSRs for new P-256 keys, for the tests
// that renew through the real CA.
func testCA(t *testing.T, db *sitedb.DB) (*ca.CA, func() ([]byte, *ecdsa.PrivateKey)) {
	t.Helper()
	c, err := ca.New(context.Background(), db, ca.Options{SiteCode: "TST", Hierarchy: hierarchy(), PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return c, func() ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
}

// TestRenewalSupersedesAcrossMPs: a copy of the device (its certificate C0 and key) is
// served by MP-B, which has C0 cached; the real device renews and presents its successor
// C1 at MP-A. MP-B hears of it through the site's events: within a second the copy's
// notification channel and kept-alive connection on MP-B are closed, and C0 is refused
// there with 403 certificate_superseded (the cache let MP-B serve the copy until C0
// expired). The device shows one clone warning, whichever MPs refused the copy.
func TestRenewalSupersedesAcrossMPs(t *testing.T) {
	for _, driver := range sitedbtest.Drivers {
		t.Run(string(driver), func(t *testing.T) {
			dsn := sitedbtest.NewDSN(t, driver)
			a := newFixture(t, sitedbtest.Open(t, driver, dsn), Options{ID: "mp-a"})
			b := newFixture(t, sitedbtest.Open(t, driver, dsn), Options{ID: "mp-b"})
			ctx := context.Background()
			c, csr := testCA(t, a.db)
			req, key := csr()
			chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-9"}, req, "admin:test")
			if err != nil {
				t.Fatal(err)
			}
			old := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
			id := deviceID(old)

			// The copy on MP-B: a request (MP-B caches C0), a kept-alive connection, a channel.
			if st, e := call(t, b.client(&old), "GET", b.intranet+"/v1/whoami", nil, nil); st != 200 {
				t.Fatalf("the copy's first request: %d %+v", st, e)
			}
			kept, br := b.rawConn(t, old)
			if resp := request(t, kept, br, "/v1/policy"); resp.StatusCode != http.StatusOK {
				t.Fatalf("the copy's kept-alive connection: %d", resp.StatusCode)
			}
			copyChannel := live(t, b.intranet, b.client(&old))
			waitConnected(t, b.mp, id, 1)

			// The real device renews and presents its successor at MP-A.
			req2, key2 := csr()
			chain2, err := c.Renew(ctx, chain[0], req2)
			if err != nil {
				t.Fatal(err)
			}
			renewed := tls.Certificate{Certificate: [][]byte{chain2[0].Raw, chain2[1].Raw}, PrivateKey: key2, Leaf: chain2[0]}
			start := time.Now()
			if st, e := call(t, a.client(&renewed), "GET", a.intranet+"/v1/whoami", nil, nil); st != 200 {
				t.Fatalf("the renewed certificate at MP-A: %d %+v", st, e)
			}
			if reason := copyChannel.closedWith(t); reason != "certificate superseded" {
				t.Errorf("the copy's channel on MP-B closed with %q, want \"certificate superseded\"", reason)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("the copy's channel on MP-B closed %v after the renewal was presented, want within a second", d)
			}
			_ = kept.SetReadDeadline(time.Now().Add(time.Second))
			var ne net.Error
			if _, err := br.ReadByte(); err == nil || errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("the copy's kept-alive connection on MP-B is still open (%v)", err)
			}
			waitSupersedeHeard(t, a.mp) // MP-A too: else its closing could cut the request below
			for _, f := range []*fixture{b, a, b} {
				st, e := call(t, f.client(&old), "GET", f.intranet+"/v1/policy", nil, nil)
				if st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
					t.Errorf("the superseded certificate at %s: %d %+v, want 403 certificate_superseded", f.mp.o.ID, st, e)
				}
			}
			if st, e := call(t, b.client(&renewed), "GET", b.intranet+"/v1/policy", nil, nil); st != 200 {
				t.Errorf("the renewed certificate at MP-B: %d %+v", st, e)
			}
			for _, f := range []*fixture{a, b} {
				d, err := f.mp.Device(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone: certificate "+wire.FormatSerial(old.Leaf.SerialNumber)) {
					t.Errorf("device warnings at %s = %q, want one clone warning naming %s", f.mp.o.ID, d.Warnings, wire.FormatSerial(old.Leaf.SerialNumber))
				}
			}
		})
	}
}

// A renewal presented at another MP while this MP missed the announcement still ends the
// older certificate here: the catch-up after a missed event finds it in the store (the
// copy's channel closes, its certificate is refused), and while the subscription is down
// a certificate this MP has cached is checked against the store at every request.
func TestMissedRenewalIsCaughtUp(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, sqliteDB(t), Options{})
	c, csr := testCA(t, f.db)
	// renewed returns a copy's certificate, served and cached by the MP, once the device's
	// renewal of it is recorded as presented at another MP whose event did not come here.
	renewed := func(name string) tls.Certificate {
		t.Helper()
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
	refused := func(old tls.Certificate) {
		t.Helper()
		if st, e := call(t, f.client(&old), "GET", f.intranet+"/v1/policy", nil, nil); st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
			t.Errorf("the superseded certificate: %d %+v, want 403 certificate_superseded", st, e)
		}
	}
	t.Run("catch-up", func(t *testing.T) {
		old := renewed("pc-1")
		ch := live(t, f.intranet, f.client(&old))
		waitConnected(t, f.mp, deviceID(old), 1)
		f.mp.hub.catchUp(ctx) // as after the subscription reconnects
		if reason := ch.closedWith(t); reason != "certificate superseded" {
			t.Errorf("the copy's channel closed with %q", reason)
		}
		refused(old)
	})
	t.Run("subscription down", func(t *testing.T) {
		old := renewed("pc-2")
		f.mp.eventsLive.Store(false) // as on sitedb.Down
		refused(old)
	})
}

// A line contested after its older certificate was refused: the copy renewed first and
// presented its renewal, so the real device's certificate was refused as superseded; then
// the real device's renewal is refused and the line is contested. The refusal the MP
// remembers gives way within supersededRecheck: the real device is served again, flagged.
func TestContestedAfterRefusalServedAgain(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		clk := &testClock{}
		f := newFixture(t, db, Options{Now: clk.now})
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-10"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		device := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
		copyReq, copyKey := csr()
		copyChain, err := c.Renew(ctx, chain[0], copyReq)
		if err != nil {
			t.Fatal(err)
		}
		clone := tls.Certificate{Certificate: [][]byte{copyChain[0].Raw, copyChain[1].Raw}, PrivateKey: copyKey, Leaf: copyChain[0]}
		if st, e := call(t, f.client(&clone), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the copy's renewal: %d %+v", st, e)
		}
		// The renewal's announcement closes the old certificate's connections as it is
		// heard of, a request in flight then included: wait until it has been.
		waitSupersedeHeard(t, f.mp)
		if st, e := call(t, f.client(&device), "GET", f.intranet+"/v1/policy", nil, nil); st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
			t.Fatalf("the real device before its renewal was refused: %d %+v, want 403 certificate_superseded", st, e)
		}
		realReq, _ := csr()
		if _, err := c.Renew(ctx, chain[0], realReq); !errors.Is(err, ca.ErrRenewalSuperseded) {
			t.Fatalf("the real device's renewal after the copy's: %v, want renewal_superseded", err)
		}
		clk.move(supersededRecheck)
		if st, e := call(t, f.client(&device), "GET", f.intranet+"/v1/policy", nil, nil); st != 200 {
			t.Errorf("the real device on a line contested since its refusal: %d %+v, want 200", st, e)
		}
	})
}

// Two MPs on PostgreSQL whose subscriptions to site events lose their connection (and
// cannot get it back for a while): the renewals presented at MP-A meanwhile are not heard
// of at MP-B, which asks the store for the certificates it has cached (a copy is refused
// at once), and catches up when its subscription is back: the channel of another copy
// closes then.
func TestRenewalHeardOfAfterListenerDown(t *testing.T) {
	ctx := context.Background()
	dsn := sitedbtest.NewDSN(t, sitedb.Postgres)
	a := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-a"})
	b := newFixture(t, sitedbtest.Open(t, sitedb.Postgres, dsn), Options{ID: "mp-b"})
	c, csr := testCA(t, a.db)
	type line struct{ old, renewed tls.Certificate }
	issue := func(name string) line {
		t.Helper()
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: name}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		req2, key2 := csr()
		chain2, err := c.Renew(ctx, chain[0], req2)
		if err != nil {
			t.Fatal(err)
		}
		l := line{tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]},
			tls.Certificate{Certificate: [][]byte{chain2[0].Raw, chain2[1].Raw}, PrivateKey: key2, Leaf: chain2[0]}}
		if st, e := call(t, b.client(&l.old), "GET", b.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the copy at MP-B: %d %+v", st, e)
		}
		return l
	}
	withChannel, cached := issue("pc-1"), issue("pc-2")
	ch := live(t, b.intranet, b.client(&withChannel.old))
	waitConnected(t, b.mp, deviceID(withChannel.old), 1)

	var name string
	if err := a.db.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/postgres" // a database cannot refuse connections from a session on itself
	admin := sitedbtest.Open(t, sitedb.Postgres, u.String())
	allow := func(yes bool) {
		t.Helper()
		if _, err := admin.Exec(ctx, `ALTER DATABASE "`+name+`" WITH ALLOW_CONNECTIONS `+map[bool]string{true: "true", false: "false"}[yes]); err != nil {
			t.Fatal(err)
		}
	}
	allow(false)
	t.Cleanup(func() { allow(true) })
	if _, err := a.db.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); b.mp.eventsLive.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("MP-B was not told that its subscription lost its connection")
		}
	}

	for _, l := range []line{withChannel, cached} {
		if st, e := call(t, a.client(&l.renewed), "GET", a.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the renewed certificate at MP-A: %d %+v", st, e)
		}
	}
	if st, e := call(t, b.client(&cached.old), "GET", b.intranet+"/v1/policy", nil, nil); st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
		t.Errorf("a cached copy at MP-B while its subscription is down: %d %+v, want 403 certificate_superseded", st, e)
	}
	if !ch.open() {
		t.Fatal("the other copy's channel closed before MP-B caught up")
	}
	allow(true)
	select {
	case err := <-ch.done:
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Reason != "certificate superseded" {
			t.Errorf("the copy's channel after MP-B caught up: %v, want closed with \"certificate superseded\"", err)
		}
	case <-time.After(15 * time.Second): // the listener's reconnect backoff reaches 10 s
		t.Fatal("the copy's channel is still open after MP-B's subscription came back")
	}
}

// waitSupersedeHeard waits until m has handled a renewal's announcement.
func waitSupersedeHeard(t *testing.T, m *MP) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for m.supersedesDone.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the renewal's announcement was not handled within 10 s")
		}
		time.Sleep(5 * time.Millisecond) // polls the condition itself
	}
}
