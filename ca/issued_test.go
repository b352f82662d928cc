package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// Concurrent enrollments on two CAs over one database (two servers of a site), on tokens
// grouped into the same transactions: a token of N uses gives exactly N certificates, a
// refused enrollment stores nothing, and a token that ran out does not fail the others
// committed with it.
func TestConcurrentEnrollmentsSpendExactlyTheUses(t *testing.T) {
	for _, d := range sitedbtest.Drivers {
		t.Run(string(d), func(t *testing.T) {
			dsn := sitedbtest.NewDSN(t, d)
			cas := []*CA{newTestCA(t, sitedbtest.Open(t, d, dsn)), newTestCA(t, sitedbtest.Open(t, d, dsn))}
			ctx := context.Background()
			const uses, racers = 7, 48
			scarce := mustToken(t, cas[0], TokenSpec{Profile: Client, Uses: uses})
			plenty := mustToken(t, cas[0], TokenSpec{Profile: Client, Uses: 1000})
			revoked, rt, err := cas[0].CreateToken(ctx, TokenSpec{Profile: Client, Uses: 1000}, "admin:test")
			if err != nil {
				t.Fatal(err)
			}
			if err := cas[0].RevokeToken(ctx, rt.ID); err != nil {
				t.Fatal(err)
			}
			tokens := []string{scarce, plenty, revoked}
			csrs := make([][]byte, racers)
			for i := range csrs {
				csrs[i] = csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: fmt.Sprintf("racer-%d", i)}})
			}
			errs := make([]error, racers)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, errs[i] = cas[i%2].Enroll(ctx, tokens[i%3], "", csrs[i])
				}()
			}
			close(start)
			wg.Wait()
			won := map[int]int{}
			for i, err := range errs {
				switch tok := i % 3; {
				case err == nil && tok != 2:
					won[tok]++
				case tok == 0 && errors.Is(err, ErrTokenUsed):
				case tok == 2 && errors.Is(err, ErrTokenRevoked):
				default:
					t.Errorf("enrollment %d with token %d: %v", i, tok, err)
				}
			}
			if won[0] != uses || won[1] != racers/3 {
				t.Errorf("%d enrollments on the %d-use token and %d of %d on the plentiful one succeeded", won[0], uses, won[1], racers/3)
			}
			db := sitedbtest.Open(t, d, dsn)
			for tok, want := range map[string]int{scarce: uses, plenty: racers / 3, revoked: 0} {
				id := hashSecret(tok)[:16]
				n, left := certsBy(t, db, id)
				if n != want {
					t.Errorf("token %s: %d certificates recorded, want %d", id, n, want)
				}
				if tok != revoked && n+left != map[string]int{scarce: uses, plenty: 1000}[tok] {
					t.Errorf("token %s: %d certificates and %d uses left do not add up", id, n, left)
				}
			}
		})
	}
}

func certsBy(t *testing.T, db *sitedb.DB, id string) (certs, usesLeft int) {
	t.Helper()
	ctx := context.Background()
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM certificates WHERE issued_by = ?`, "token:"+id).Scan(&certs); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(ctx, `SELECT COALESCE(SUM(uses_left), 0) FROM enrollment_token_shards WHERE token_id = ?`, id).Scan(&usesLeft); err != nil {
		t.Fatal(err)
	}
	return certs, usesLeft
}

// One group holding more enrollments of a token than it has uses left: the uses it has are
// granted, the rest refused and not recorded, and the other token's enrollments in the
// group are recorded.
func TestGroupCommitGrantsOnlyTheUsesLeft(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		scarce := mustToken(t, c, TokenSpec{Profile: Client, Uses: 3})
		plenty := mustToken(t, c, TokenSpec{Profile: Client, Uses: 10})
		var group []*pendingCert
		for i := range 8 {
			tok := []string{scarce, plenty}[i%2]
			group = append(group, &pendingCert{cert: testLeaf(t, int64(1000+i)), by: "token:" + hashSecret(tok)[:16], done: make(chan struct{})})
		}
		c.store.commit(context.Background(), group, 0)
		granted := map[int]int{}
		for i, p := range group {
			<-p.done
			switch {
			case p.err == nil:
				granted[i%2]++
			case i%2 == 0 && errors.Is(p.err, ErrTokenUsed):
			default:
				t.Errorf("certificate %d: %v", i, p.err)
			}
		}
		if granted[0] != 3 || granted[1] != 4 {
			t.Errorf("granted %d of the 3-use token and %d of 4 on the other", granted[0], granted[1])
		}
		for tok, want := range map[string][2]int{scarce: {3, 0}, plenty: {4, 6}} {
			if n, left := certsBy(t, db, hashSecret(tok)[:16]); n != want[0] || left != want[1] {
				t.Errorf("token: %d certificates and %d uses left, want %v", n, left, want)
			}
		}
	})
}

// testLeaf makes a self-signed client certificate with a given serial.
func testLeaf(t *testing.T, serial int64) *x509.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprintf("leaf-%d", serial)},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// A token this CA has used (and remembers) and another server of the site then revokes
// is refused here, and the refused enrollment stores nothing.
func TestTokenRevokedByAnotherServerIsRefused(t *testing.T) {
	for _, d := range sitedbtest.Drivers {
		t.Run(string(d), func(t *testing.T) {
			dsn := sitedbtest.NewDSN(t, d)
			db := sitedbtest.Open(t, d, dsn)
			here, there := newTestCA(t, db), newTestCA(t, sitedbtest.Open(t, d, dsn))
			ctx := context.Background()
			secret, tok, err := here.CreateToken(ctx, TokenSpec{Profile: Client, Uses: 5}, "admin:test")
			if err != nil {
				t.Fatal(err)
			}
			csr := func() []byte {
				return csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-1"}})
			}
			if _, err := here.Enroll(ctx, secret, "", csr()); err != nil {
				t.Fatal(err)
			}
			if err := there.RevokeToken(ctx, tok.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := here.Enroll(ctx, secret, "", csr()); !errors.Is(err, ErrTokenRevoked) {
				t.Fatalf("enrolling with a token revoked by another server: %v, want ErrTokenRevoked", err)
			}
			if n, left := certsBy(t, db, tok.ID); n != 1 || left != 4 {
				t.Errorf("%d certificates and %d uses left, want 1 and 4", n, left)
			}
			if _, err := here.Enroll(ctx, secret, "", csr()); !errors.Is(err, ErrTokenRevoked) {
				t.Fatalf("enrolling again: %v, want ErrTokenRevoked", err)
			}
		})
	}
}

// A request whose signature does not verify is refused as a bad CSR (the signer verifies
// it, Enroll does not verify it twice), and neither stores a certificate nor spends a use.
func TestEnrollRefusesBadCSRSignature(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		secret, tok, err := c.CreateToken(context.Background(), TokenSpec{Profile: Client, Uses: 2}, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-1"}}))
		block.Bytes[len(block.Bytes)-1] ^= 0x01 // the last byte of the signature
		if _, err := x509.ParseCertificateRequest(block.Bytes); err != nil {
			t.Fatalf("the tampered request must still parse: %v", err)
		}
		if _, err := c.Enroll(context.Background(), secret, "", pem.EncodeToMemory(block)); !errors.Is(err, ErrBadCSR) {
			t.Fatalf("tampered CSR: %v, want ErrBadCSR", err)
		}
		if n, left := certsBy(t, db, tok.ID); n != 0 || left != 2 {
			t.Errorf("%d certificates and %d uses left, want 0 and 2", n, left)
		}
	})
}

// A group whose transaction fails (here two certificates with one serial) is tried again
// one certificate at a time: the good ones are recorded and spend their uses, the bad one
// fails alone and spends nothing.
func TestGroupCommitFailureFailsOnlyTheBadCertificate(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		secret := mustToken(t, c, TokenSpec{Profile: Client, Uses: 10})
		id := hashSecret(secret)[:16]
		dup := testLeaf(t, 7000)
		group := []*pendingCert{
			{cert: dup, by: "token:" + id, done: make(chan struct{})},
			{cert: testLeaf(t, 7001), by: "token:" + id, done: make(chan struct{})},
			{cert: dup, by: "token:" + id, done: make(chan struct{})},
		}
		c.store.commit(context.Background(), group, 0)
		for i, p := range group {
			<-p.done
			if (p.err == nil) != (i < 2) {
				t.Errorf("certificate %d: %v", i, p.err)
			}
		}
		if n, left := certsBy(t, db, id); n != 2 || left != 8 {
			t.Errorf("%d certificates and %d uses left, want 2 and 8", n, left)
		}
	})
}

// A token's uses are split over shards: a group needing more than any one shard has is
// served from all of them, never beyond what is left, and ListTokens shows the sum.
func TestGroupCommitSpendsAcrossShards(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		secret := mustToken(t, c, TokenSpec{Profile: Client, Uses: 10}) // shards 3, 3, 2, 2
		id := hashSecret(secret)[:16]
		commit := func(first int64, n int) (granted int) {
			var group []*pendingCert
			for i := range n {
				group = append(group, &pendingCert{cert: testLeaf(t, first+int64(i)), by: "token:" + id, done: make(chan struct{})})
			}
			c.store.commit(context.Background(), group, 1)
			for _, p := range group {
				<-p.done
				switch {
				case p.err == nil:
					granted++
				case !errors.Is(p.err, ErrTokenUsed):
					t.Errorf("certificate: %v", p.err)
				}
			}
			return granted
		}
		if g := commit(8000, 8); g != 8 {
			t.Errorf("a group of 8 on a token of 10 uses: %d granted", g)
		}
		toks, err := c.ListTokens(context.Background())
		if err != nil || len(toks) != 1 || toks[0].UsesLeft != 2 {
			t.Fatalf("ListTokens: %+v, %v; want one token with 2 uses left", toks, err)
		}
		if g := commit(8100, 3); g != 2 {
			t.Errorf("a group of 3 on the last 2 uses: %d granted", g)
		}
		if n, left := certsBy(t, db, id); n != 10 || left != 0 {
			t.Errorf("%d certificates and %d uses left, want 10 and 0", n, left)
		}
	})
}

// A token made before its uses moved to shards (003_tokens.sql) keeps its uses left.
func TestTokensBeforeShardsKeepTheirUses(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
		if err != nil {
			t.Fatal(err)
		}
		var before []sitedb.Migration
		for _, m := range ms {
			if m.Version < 3 {
				before = append(before, m)
			}
		}
		if err := db.Migrate(ctx, "ca", before); err != nil {
			t.Fatal(err)
		}
		secret := TokenPrefix + "before-shards"
		id := hashSecret(secret)[:16]
		if _, err := db.Exec(ctx, `INSERT INTO enrollment_tokens (id, hash, profile, subject, uses, uses_left, expires_at, created_at, created_by)
			VALUES (?, ?, 'client', '', 5, 2, ?, ?, 'admin:test')`, id, hashSecret(secret), time.Now().Add(time.Hour).Unix(), time.Now().Unix()); err != nil {
			t.Fatal(err)
		}
		c := newTestCA(t, db) // applies 003
		csr := func() []byte {
			return csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-1"}})
		}
		for i := range 2 {
			if _, err := c.Enroll(ctx, secret, "", csr()); err != nil {
				t.Fatalf("use %d of the 2 left: %v", i+1, err)
			}
		}
		if _, err := c.Enroll(ctx, secret, "", csr()); !errors.Is(err, ErrTokenUsed) {
			t.Fatalf("a third use: %v, want ErrTokenUsed", err)
		}
	})
}

// On PostgreSQL a group is one statement: the certificates of every token that has the
// uses on a shard, and those that need no token, are recorded at once; those of a token
// short of uses are left for the transaction that refuses them exactly, with nothing of
// theirs recorded or spent.
func TestRecordAtOnce(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.Postgres, sitedbtest.NewDSN(t, sitedb.Postgres))
	c := newTestCA(t, db)
	scarce := hashSecret(mustToken(t, c, TokenSpec{Profile: Client, Uses: 2}))[:16] // one shard of 2
	plenty := hashSecret(mustToken(t, c, TokenSpec{Profile: Client, Uses: 100}))[:16]
	var group []*pendingCert
	for i := range 9 {
		by := []string{"token:" + scarce, "token:" + plenty, "admin:test"}[i%3]
		group = append(group, &pendingCert{cert: testLeaf(t, int64(9000+i)), by: by, done: make(chan struct{})})
	}
	rest := c.store.recordAtOnce(context.Background(), group, 0)
	for i, p := range group {
		left := false
		for _, r := range rest {
			left = left || r == p
		}
		if left != (i%3 == 0) {
			t.Errorf("certificate %d (%s): left for the transaction = %v", i, p.by, left)
		}
		select {
		case <-p.done:
			if left || p.err != nil {
				t.Errorf("certificate %d: done with %v although left", i, p.err)
			}
		default:
			if !left {
				t.Errorf("certificate %d: recorded but not done", i)
			}
		}
	}
	if n, left := certsBy(t, db, scarce); n != 0 || left != 2 {
		t.Errorf("token short of uses: %d certificates and %d uses left, want 0 and 2", n, left)
	}
	if n, left := certsBy(t, db, plenty); n != 3 || left != 97 {
		t.Errorf("token with uses: %d certificates and %d uses left, want 3 and 97", n, left)
	}
	var admin int
	if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM certificates WHERE issued_by = 'admin:test'`).Scan(&admin); err != nil || admin != 3 {
		t.Errorf("%d certificates without a token recorded (%v), want 3", admin, err)
	}
}
