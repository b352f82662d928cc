package ca

import (
	"context"
	"crypto"
	"net/url"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// While the connection that hears of revocations is lost, the OCSP cache keeps nothing
// and serves nothing it kept: a revocation made on another CA server meanwhile is answered
// at once. The listener is cut off as a full server would cut it off (its backend
// terminated, new connections refused) while the connections already open still work.
// (Review finding: the cache served a stale "good" until the listener came back.)
func TestOCSPCacheStopsWhileListenerDown(t *testing.T) {
	dsn := sitedbtest.NewDSN(t, sitedb.Postgres)
	db := sitedbtest.Open(t, sitedb.Postgres, dsn)
	ctx := context.Background()
	c := newTestCA(t, db)
	other := newTestCA(t, sitedbtest.Open(t, sitedb.Postgres, dsn)) // another CA server of the site
	x := issueClient(t, c, "pc-01")
	applied := runWatched(t, c)
	req, err := ocsp.ParseRequest(ocspRequest(t, x, c.Issuing(), crypto.SHA256))
	if err != nil {
		t.Fatal(err)
	}
	status := func() int {
		t.Helper()
		der, err := c.OCSP(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ocsp.ParseResponse(der, c.Issuing())
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if status() != ocsp.Good || c.ocsp.cache.len() != 1 {
		t.Fatalf("a good answer is not cached (%d cached)", c.ocsp.cache.len())
	}

	var name string
	if err := db.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
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
	var killed int
	if err := db.QueryRow(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listening backends (%v), want 1", killed, err)
	}
	select {
	case sn := <-applied:
		if sn != sitedb.Down {
			t.Errorf("the watcher applied %q after the listener was cut off, want Down", sn)
		}
	case <-time.After(15 * time.Second):
		t.Error("the watcher was not told the listener is cut off")
	}
	if err := other.Revoke(ctx, x.SerialNumber.String(), "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != ocsp.Revoked {
		t.Errorf("revoked on another CA server while the listener is cut off: OCSP says %d (0 = good), want revoked", got)
	}
	if n := c.ocsp.cache.len(); n != 0 {
		t.Errorf("%d answers cached while the listener is cut off", n)
	}

	allow(true)
	if sn := <-applied; sn != "" {
		t.Errorf("the watcher applied %q once the listener could come back, want \"\"", sn)
	}
	if status() != ocsp.Revoked || c.ocsp.cache.len() != 1 {
		t.Errorf("answers are not cached again once the listener is back (%d cached)", c.ocsp.cache.len())
	}
}
