package ca

import (
	"context"
	"crypto"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// Revoke itself drops the cached OCSP answers of the successors a keyCompromise revokes,
// before any announcement reaches the watcher, whatever case the reason is typed in.
func TestRevokeDropsSuccessorsOCSPAtOnce(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newClockedCA(t, db, &testClock{t: time.Now()})
		a := enrollClient(t, c, "pc-01")
		b := mustRenew(t, c, a, newKey(t))
		c.ocsp.cache.setLive(true) // as the watcher does; no watcher runs, so only Revoke forgets
		req, _ := ocsp.ParseRequest(ocspRequest(t, b, c.Issuing(), crypto.SHA1))
		if _, err := c.OCSP(ctx, req); err != nil {
			t.Fatal(err)
		}
		if err := c.Revoke(ctx, a.SerialNumber.String(), "KEYCOMPROMISE"); err != nil {
			t.Fatal(err)
		}
		if rev, _ := c.store.revocation(ctx, b.SerialNumber.String()); rev == nil {
			t.Fatal("successor not revoked")
		}
		der, _ := c.OCSP(ctx, req)
		r, err := ocsp.ParseResponse(der, c.Issuing())
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != ocsp.Revoked {
			t.Errorf("successor revoked for keyCompromise, OCSP still says %d (0 = good) from the cache", r.Status)
		}
	})
}
