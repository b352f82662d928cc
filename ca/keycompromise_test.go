package ca

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"github.com/ibcm-project/ibcm/internal/access"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// crlReasons returns the reason code of every entry of the CA's current CRL, by decimal serial.
func crlReasons(t *testing.T, c *CA) map[string]int {
	t.Helper()
	der, err := c.CRL(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range crl.RevokedCertificateEntries {
		out[e.SerialNumber.String()] = e.ReasonCode
	}
	return out
}

// A device was blocked or its certificate revoked `unspecified`; its key is found
// compromised later. The keyCompromise revocation of the revoked certificate still revokes
// the successor the thief may hold, and changes the reason to keyCompromise. (Review
// finding: it answered ErrAlreadyRevoked and left the successor valid.)
func TestKeyCompromiseAfterEarlierRevocation(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		a := enrollClient(t, c, "pc-01")
		b := mustRenew(t, c, a, newKey(t)) // the thief's (or the device's) successor
		if err := c.Revoke(ctx, a.SerialNumber.String(), "unspecified"); err != nil {
			t.Fatal(err)
		}
		first, _ := c.store.revocation(ctx, a.SerialNumber.String())
		rev, err := c.RevokeWith(ctx, a.SerialNumber.String(), "keyCompromise", false)
		if err != nil {
			t.Fatalf("keyCompromise after unspecified: %v", err)
		}
		if rev, _ := c.store.revocation(ctx, b.SerialNumber.String()); rev == nil {
			t.Errorf("successor %s of a certificate later found compromised is not revoked", b.SerialNumber)
		}
		if rev.ChangedFrom != "unspecified" || !slices.Equal(rev.Also, []string{b.SerialNumber.String()}) {
			t.Errorf("outcome %+v, want the reason changed from unspecified and %s revoked too", rev, b.SerialNumber)
		}
		now, _ := c.store.revocation(ctx, a.SerialNumber.String())
		if now.ReasonCode != reasonKeyCompromise || now.Reason != "keyCompromise" || !now.RevokedAt.Equal(first.RevokedAt) {
			t.Errorf("stored revocation %+v, want keyCompromise at the first revocation's time %s", now, first.RevokedAt)
		}
		reasons := crlReasons(t, c)
		for _, cert := range []*x509.Certificate{a, b} {
			if got, ok := reasons[cert.SerialNumber.String()]; !ok || got != reasonKeyCompromise {
				t.Errorf("CRL entry of %s: reason %d (listed %v), want keyCompromise", cert.SerialNumber, got, ok)
			}
		}
		// Nothing left to do: the same revocation again is an error, as before.
		if _, err := c.RevokeWith(ctx, a.SerialNumber.String(), "keyCompromise", false); !errors.Is(err, ErrAlreadyRevoked) {
			t.Errorf("keyCompromise a second time = %v, want ErrAlreadyRevoked", err)
		}
		// Another reason never replaces keyCompromise.
		if err := c.Revoke(ctx, a.SerialNumber.String(), "superseded"); !errors.Is(err, ErrAlreadyRevoked) {
			t.Errorf("superseded after keyCompromise = %v, want ErrAlreadyRevoked", err)
		}
		if now, _ := c.store.revocation(ctx, a.SerialNumber.String()); now.ReasonCode != reasonKeyCompromise {
			t.Errorf("reason after a later superseded: %s", now.Reason)
		}
	})
}

// Renewals that keep their key give one key several certificates: a keyCompromise of one
// revokes all of them, and their successors. (Review finding: the earlier certificate of
// the key stayed valid.)
func TestKeyCompromiseOfKeptKeyLine(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		k := newKey(t)
		a := enrollClient(t, c, "pc-01")
		b := mustRenew(t, c, a, newKey(t))
		b2 := mustRenew(t, c, b, k)
		c3 := mustRenew(t, c, b2, k) // renewal that keeps key k
		other := enrollClient(t, c, "pc-02")
		// b2 is recorded as an older CA server (before migration 004) would have recorded
		// it: without its key hash.
		if _, err := db.Exec(ctx, `UPDATE certificates SET spki_sha256 = NULL WHERE serial = ?`, b2.SerialNumber.String()); err != nil {
			t.Fatal(err)
		}
		rev, err := c.RevokeWith(ctx, c3.SerialNumber.String(), "keyCompromise", false)
		if err != nil {
			t.Fatal(err)
		}
		if rev, _ := c.store.revocation(ctx, b2.SerialNumber.String()); rev == nil {
			t.Errorf("%s certifies the compromised key too and is still valid", b2.SerialNumber)
		}
		if !slices.Equal(rev.Also, []string{b2.SerialNumber.String()}) {
			t.Errorf("also revoked %v, want %s", rev.Also, b2.SerialNumber)
		}
		for _, cert := range []*x509.Certificate{a, b, other} {
			if rev, _ := c.store.revocation(ctx, cert.SerialNumber.String()); rev != nil {
				t.Errorf("%s (another key) revoked", cert.SerialNumber)
			}
		}
	})
}

// Every certificate recorded before migration 004 gets its key hash when the CA starts.
func TestKeyHashesFilledAtStart(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		a := enrollClient(t, c, "pc-01")
		if _, err := db.Exec(ctx, `UPDATE certificates SET spki_sha256 = NULL`); err != nil {
			t.Fatal(err)
		}
		// A row the parser refuses stops neither the start nor a keyCompromise.
		if _, err := db.Exec(ctx, `INSERT INTO certificates (serial, profile, subject, issuer_id, not_before, not_after, der, issued_by, created_at)
			VALUES ('1', 'client', 'junk', 'x', 0, 0, ?, 'test', 0)`, []byte("not DER")); err != nil {
			t.Fatal(err)
		}
		c = newTestCA(t, db)
		if _, err := c.RevokeWith(ctx, a.SerialNumber.String(), "keyCompromise", false); err != nil {
			t.Errorf("keyCompromise with an unreadable row in the table: %v", err)
		}
		var n int
		if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM certificates WHERE spki_sha256 IS NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		var h string
		if err := db.QueryRow(ctx, `SELECT spki_sha256 FROM certificates WHERE serial = ?`, a.SerialNumber.String()).Scan(&h); err != nil {
			t.Fatal(err)
		}
		if n != 0 || h != publicKeyHash(a.PublicKey) {
			t.Errorf("%d certificates without a key hash; %s's is %q, want %q", n, a.SerialNumber, h, publicKeyHash(a.PublicKey))
		}
	})
}

// The admin API answers a keyCompromise of an already revoked certificate with what it did,
// not with an error.
func TestRevokeAPISaysWhatItDid(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	ctx := context.Background()
	c := newTestCA(t, db)
	a := enrollClient(t, c, "pc-01")
	b := mustRenew(t, c, a, newKey(t))
	if err := c.Revoke(ctx, a.SerialNumber.String(), "privilegeWithdrawn"); err != nil {
		t.Fatal(err)
	}
	srv, hc := serveTLS(t, c, userCert(t, c, "alice", access.FullAdministrator))
	resp, err := hc.Post(srv.URL+"/v1/admin/certificates/"+wire.FormatSerial(a.SerialNumber)+"/revoke", "application/json",
		strings.NewReader(`{"reason":"keyCompromise"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got wire.Revoked
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || got.Reason != "keyCompromise" || got.ReasonChangedFrom != "privilegeWithdrawn" ||
		!slices.Equal(got.AlsoRevoked, []string{wire.FormatSerial(b.SerialNumber)}) {
		t.Errorf("HTTP %d %+v, want 200, keyCompromise changed from privilegeWithdrawn, %s also revoked", resp.StatusCode, got, wire.FormatSerial(b.SerialNumber))
	}
}

// A certificate records its key hash when it is issued, through enrollment's group commit
// as through renewal, so a keyCompromise never depends on the backfill.
func TestKeyHashRecordedAtIssue(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		a := enrollClient(t, c, "pc-01")
		b := mustRenew(t, c, a, newKey(t))
		for _, cert := range []*x509.Certificate{a, b} {
			var h sql.NullString
			if err := db.QueryRow(ctx, `SELECT spki_sha256 FROM certificates WHERE serial = ?`, cert.SerialNumber.String()).Scan(&h); err != nil {
				t.Fatal(err)
			}
			if h.String != publicKeyHash(cert.PublicKey) {
				t.Errorf("%s recorded with key hash %q, want %q", cert.SerialNumber, h.String, publicKeyHash(cert.PublicKey))
			}
		}
	})
}
