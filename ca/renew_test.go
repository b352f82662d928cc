package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/trust"
)

func enrollClient(t *testing.T, c *CA, cn string) *x509.Certificate {
	t.Helper()
	chain, err := c.Enroll(context.Background(), mustToken(t, c, TokenSpec{Profile: Client}), "",
		csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}))
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	return chain[0]
}

func renewFor(t *testing.T, c *CA, old *x509.Certificate, key crypto.Signer) ([]*x509.Certificate, error) {
	t.Helper()
	return c.Renew(context.Background(), old, csrPEM(t, key, &x509.CertificateRequest{}))
}

func mustRenew(t *testing.T, c *CA, old *x509.Certificate, key crypto.Signer) *x509.Certificate {
	t.Helper()
	chain, err := renewFor(t, c, old, key)
	if err != nil {
		t.Fatalf("Renew %s: %v", old.SerialNumber, err)
	}
	return chain[0]
}

func successorCount(t *testing.T, db *sitedb.DB, old *x509.Certificate) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM certificates WHERE renewed_from = ?`, old.SerialNumber.String()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func conflictAttempts(t *testing.T, db *sitedb.DB, old *x509.Certificate) int {
	t.Helper()
	var n int
	err := db.QueryRow(context.Background(), `SELECT attempts FROM renewal_conflicts WHERE old_serial = ?`, old.SerialNumber.String()).Scan(&n)
	if err != nil {
		return 0
	}
	return n
}

func TestRenewIsIdempotentByKey(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		a := enrollClient(t, c, "pc-01")
		k1, k2 := newKey(t), newKey(t)
		b := mustRenew(t, c, a, k1)
		// A retry with the same key, in a new CSR, gets the very same certificate.
		again := mustRenew(t, c, a, k1)
		if !bytes.Equal(again.Raw, b.Raw) {
			t.Fatalf("a retry with the same key got serial %s, the first answer was %s", again.SerialNumber, b.SerialNumber)
		}
		if n := successorCount(t, db, a); n != 1 {
			t.Errorf("%d successors recorded, want 1", n)
		}
		// Another key for the renewed certificate: refused, and recorded once per attempt.
		for i := 1; i <= 2; i++ {
			_, err := renewFor(t, c, a, k2)
			if !errors.Is(err, ErrRenewalSuperseded) {
				t.Fatalf("renewal with another key = %v, want ErrRenewalSuperseded", err)
			}
			if got := conflictAttempts(t, db, a); got != i {
				t.Errorf("conflict attempts = %d after %d refusals", got, i)
			}
		}
		if got := httpError(ErrRenewalSuperseded); got == nil {
			t.Error("no HTTP mapping")
		}
		if n := successorCount(t, db, a); n != 1 {
			t.Errorf("after the refusals %d successors, want 1", n)
		}
		// The line goes on from the successor, with a new key or keeping its key.
		cc := mustRenew(t, c, b, k2)
		d := mustRenew(t, c, cc, k2)
		if !samePublicKey(d.PublicKey, k2.Public()) || d.URIs[0].String() != a.URIs[0].String() {
			t.Errorf("renewal keeping the key: key or device id changed")
		}
		rec, err := c.Get(context.Background(), d.SerialNumber.String())
		if err != nil || rec.RenewedFrom != cc.SerialNumber.String() || rec.IssuedBy != "renew:"+cc.SerialNumber.String() {
			t.Errorf("record of the renewal: %+v %v", rec, err)
		}
		if _, err := c.Renew(context.Background(), d, nil); !errors.Is(err, ErrBadCSR) {
			t.Errorf("renewal without a CSR = %v, want ErrBadCSR", err)
		}
	})
}

func TestRacingRenewalsOneSuccessor(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		race := func(old *x509.Certificate, keys [2]crypto.Signer) ([2][]*x509.Certificate, [2]error) {
			csrs := [2][]byte{csrPEM(t, keys[0], &x509.CertificateRequest{}), csrPEM(t, keys[1], &x509.CertificateRequest{})}
			var chains [2][]*x509.Certificate
			var errs [2]error
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range 2 {
				wg.Go(func() {
					<-start
					chains[i], errs[i] = c.Renew(context.Background(), old, csrs[i])
				})
			}
			close(start)
			wg.Wait()
			return chains, errs
		}
		for round := range 4 {
			a := enrollClient(t, c, "racer")
			k := newKey(t)
			chains, errs := race(a, [2]crypto.Signer{k, k})
			if errs[0] != nil || errs[1] != nil {
				t.Fatalf("round %d, same key: %v", round, errs)
			}
			if !bytes.Equal(chains[0][0].Raw, chains[1][0].Raw) {
				t.Fatalf("round %d: two renewals with the same key got serials %s and %s", round, chains[0][0].SerialNumber, chains[1][0].SerialNumber)
			}
			if n := successorCount(t, db, a); n != 1 {
				t.Fatalf("round %d, same key: %d successors", round, n)
			}

			a = enrollClient(t, c, "racer")
			_, errs = race(a, [2]crypto.Signer{newKey(t), newKey(t)})
			wins := 0
			for _, err := range errs {
				switch {
				case err == nil:
					wins++
				case !errors.Is(err, ErrRenewalSuperseded):
					t.Fatalf("round %d: loser got %v, want ErrRenewalSuperseded", round, err)
				}
			}
			if wins != 1 || successorCount(t, db, a) != 1 || conflictAttempts(t, db, a) != 1 {
				t.Fatalf("round %d, two keys: %d winners, %d successors, %d conflicts; want 1 each (%v)",
					round, wins, successorCount(t, db, a), conflictAttempts(t, db, a), errs)
			}
		}
	})
}

func TestRenewTakesCurrentValidityWithinIssuer(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		a := enrollClient(t, c, "pc-01")
		c.validity[Client] = 48 * time.Hour // the profile changed since a was issued
		b := mustRenew(t, c, a, newKey(t))
		if got := b.NotAfter.Sub(b.NotBefore); got != 48*time.Hour+time.Minute {
			t.Errorf("successor lifetime = %v, want the profile's current 48h (+1m backdate); the old one had %v", got, a.NotAfter.Sub(a.NotBefore))
		}
		// Near the end of the issuing CA, a successor never outlives it.
		end := c.Issuing().NotAfter
		c.now = func() time.Time { return end.Add(-24 * time.Hour) }
		c.validity[Client] = 30 * 24 * time.Hour
		late := enrollClient(t, c, "pc-02")
		succ := mustRenew(t, c, late, newKey(t))
		if !succ.NotAfter.Equal(end) {
			t.Errorf("successor NotAfter = %s, want the issuing CA's %s", succ.NotAfter, end)
		}
	})
}

func TestRenewRefusesEndedLines(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		ctx := context.Background()

		// The successor was revoked: a retry with its key does not get it back.
		a, k := enrollClient(t, c, "pc-01"), newKey(t)
		b := mustRenew(t, c, a, k)
		if err := c.Revoke(ctx, b.SerialNumber.String(), "superseded"); err != nil {
			t.Fatal(err)
		}
		if _, err := renewFor(t, c, a, k); !errors.Is(err, ErrRevoked) {
			t.Errorf("retry after the successor was revoked = %v, want ErrRevoked", err)
		}

		// The successor expired (the profile was shortened) while the old one has not.
		long, k2 := enrollClient(t, c, "pc-02"), newKey(t)
		c.validity[Client] = time.Hour
		mustRenew(t, c, long, k2)
		real := c.now
		c.now = func() time.Time { return real().Add(30 * time.Minute) }
		if _, err := renewFor(t, c, long, k2); err != nil {
			t.Errorf("retry within the successor's life: %v", err)
		}
		c.now = func() time.Time { return real().Add(2 * time.Hour) }
		if _, err := renewFor(t, c, long, k2); !errors.Is(err, ErrExpired) {
			t.Errorf("retry after the successor expired = %v, want ErrExpired", err)
		}
		c.now = real

		// The old certificate was revoked after it was renewed.
		c.validity[Client] = 30 * 24 * time.Hour
		a, k = enrollClient(t, c, "pc-04"), newKey(t)
		mustRenew(t, c, a, k)
		if err := c.Revoke(ctx, a.SerialNumber.String(), "affiliationChanged"); err != nil {
			t.Fatal(err)
		}
		if _, err := renewFor(t, c, a, k); !errors.Is(err, ErrRevoked) {
			t.Errorf("retry after the old certificate was revoked = %v, want ErrRevoked", err)
		}
	})
}

// TestKeyCompromiseRevokesSuccessors runs the CA on one database handle and another
// server's revoked set on a second handle of the same database, as two servers of a site.
func TestKeyCompromiseRevokesSuccessors(t *testing.T) {
	for _, d := range sitedbtest.Drivers {
		t.Run(string(d), func(t *testing.T) {
			dsn := sitedbtest.NewDSN(t, d)
			db := sitedbtest.Open(t, d, dsn)
			c := newTestCA(t, db)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			other := &trust.RevokedSet{}
			if err := trust.WatchRevoked(ctx, sitedbtest.Open(t, d, dsn), other, time.Hour, zerolog.Nop()); err != nil {
				t.Fatal(err)
			}
			a := enrollClient(t, c, "pc-01")
			b := mustRenew(t, c, a, newKey(t))
			cc := mustRenew(t, c, b, newKey(t))
			x := enrollClient(t, c, "pc-02")
			y := mustRenew(t, c, x, newKey(t))
			z := mustRenew(t, c, y, newKey(t))

			// Revoking for another reason ends only that certificate.
			if err := c.Revoke(ctx, x.SerialNumber.String(), "superseded"); err != nil {
				t.Fatal(err)
			}
			// keyCompromise ends the line from there on, not what came before.
			if err := c.Revoke(ctx, y.SerialNumber.String(), "keyCompromise"); err != nil {
				t.Fatal(err)
			}
			if err := c.Revoke(ctx, a.SerialNumber.String(), "keyCompromise"); err != nil {
				t.Fatal(err)
			}
			want := []*x509.Certificate{a, b, cc, x, y, z}
			deadline := time.Now().Add(time.Second)
			for _, cert := range want {
				for !other.Contains(cert.SerialNumber) {
					if time.Now().After(deadline) {
						t.Fatalf("another server does not know %s is revoked after a second", cert.SerialNumber)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			der, err := c.CRL(ctx)
			if err != nil {
				t.Fatal(err)
			}
			crl, err := x509.ParseRevocationList(der)
			if err != nil {
				t.Fatal(err)
			}
			reasons := map[string]int{}
			for _, e := range crl.RevokedCertificateEntries {
				reasons[e.SerialNumber.String()] = e.ReasonCode
			}
			for cert, reason := range map[*x509.Certificate]int{a: 1, b: 1, cc: 1, x: 4, y: 1, z: 1} {
				if got, ok := reasons[cert.SerialNumber.String()]; !ok || got != reason {
					t.Errorf("CRL entry of %s: reason %d (listed %v), want %d", cert.SerialNumber, got, ok, reason)
				}
			}
			if len(reasons) != len(want) {
				t.Errorf("CRL lists %d certificates, want %d", len(reasons), len(want))
			}
		})
	}
}

// TestKeyCompromiseRacingRenewal: a renewal racing the keyCompromise revocation of its
// certificate either loses (refused) or is revoked with it; it never leaves a valid successor.
func TestKeyCompromiseRacingRenewal(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		ctx := context.Background()
		for round := range 6 {
			a := enrollClient(t, c, "pc-race")
			csr := csrPEM(t, newKey(t), &x509.CertificateRequest{})
			var wg sync.WaitGroup
			start := make(chan struct{})
			var renewErr, revokeErr error
			var chain []*x509.Certificate
			wg.Go(func() { <-start; chain, renewErr = c.Renew(ctx, a, csr) })
			wg.Go(func() { <-start; revokeErr = c.Revoke(ctx, a.SerialNumber.String(), "keyCompromise") })
			close(start)
			wg.Wait()
			if revokeErr != nil {
				t.Fatalf("round %d: Revoke: %v", round, revokeErr)
			}
			if renewErr != nil && !errors.Is(renewErr, ErrRevoked) {
				t.Fatalf("round %d: Renew: %v", round, renewErr)
			}
			succs, err := c.store.successors(ctx, a.SerialNumber.String())
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range succs {
				if rev, _ := c.store.revocation(ctx, s.SerialNumber.String()); rev == nil || rev.ReasonCode != 1 {
					t.Fatalf("round %d: successor %s of a compromised certificate is valid (renew err %v, got chain %v)", round, s.SerialNumber, renewErr, chain != nil)
				}
			}
		}
	})
}

// Once an MP has seen the successor, the device has it: asking again for the old
// certificate's successor, even with the same key (a renewal that kept its key, whose
// key a copy holds too), is refused as superseded and recorded as a clone.
func TestRenewAgainAfterSuccessorReachedAnMP(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		a := enrollClient(t, c, "pc-01")
		id := registerDevice(t, db, a)
		k := newKey(t)
		b := mustRenew(t, c, a, k)
		if again := mustRenew(t, c, a, k); !bytes.Equal(again.Raw, b.Raw) { // the answer was lost: same successor
			t.Fatalf("a retry before the successor reached an MP got %s, want %s", again.SerialNumber, b.SerialNumber)
		}
		if _, err := db.Exec(context.Background(), `INSERT INTO device_certificates (device_id, serial, first_seen) VALUES (?, ?, ?)`,
			id, b.SerialNumber.String(), time.Now().Unix()); err != nil {
			t.Fatal(err)
		}
		if _, err := renewFor(t, c, a, k); !errors.Is(err, ErrRenewalSuperseded) {
			t.Fatalf("the same key asking again after the successor reached an MP: %v, want ErrRenewalSuperseded", err)
		}
		if got := conflictAttempts(t, db, a); got != 1 {
			t.Errorf("conflict attempts = %d, want 1", got)
		}
	})
}
