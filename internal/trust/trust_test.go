package trust_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/trust"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

type pki struct {
	root, issuing *x509.Certificate
	issKey        *ecdsa.PrivateKey
}

func newPKI(t *testing.T) pki {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour * 24), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	root := mustCert(t, rootT, rootT, &rootKey.PublicKey, rootKey)
	issT := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "issuing"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour * 24), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	return pki{root: root, issuing: mustCert(t, issT, root, &issKey.PublicKey, rootKey), issKey: issKey}
}

func (p pki) leaf(t *testing.T, serial int64, eku x509.ExtKeyUsage, notAfter time.Time) *x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return mustCert(t, &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{eku}}, p.issuing, &k.PublicKey, p.issKey)
}

func mustCert(t *testing.T, tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestVerify(t *testing.T) {
	site, other := newPKI(t), newPKI(t)
	revoked := &trust.RevokedSet{}
	revoked.Add("66")
	v := &trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{site.root}, []*x509.Certificate{site.issuing}), Revoked: revoked}
	later := time.Now().Add(time.Hour)
	cases := []struct {
		name  string
		chain []*x509.Certificate
		want  error
	}{
		{"valid", []*x509.Certificate{site.leaf(t, 10, x509.ExtKeyUsageClientAuth, later)}, nil},
		{"valid with chain", []*x509.Certificate{site.leaf(t, 11, x509.ExtKeyUsageClientAuth, later), site.issuing}, nil},
		{"no certificate", nil, trust.ErrNoCertificate},
		{"other CA", []*x509.Certificate{other.leaf(t, 12, x509.ExtKeyUsageClientAuth, later), other.issuing}, trust.ErrUntrusted},
		{"expired", []*x509.Certificate{site.leaf(t, 13, x509.ExtKeyUsageClientAuth, time.Now().Add(-time.Minute))}, trust.ErrExpired},
		{"serverAuth only", []*x509.Certificate{site.leaf(t, 14, x509.ExtKeyUsageServerAuth, later)}, trust.ErrWrongUsage},
		{"revoked", []*x509.Certificate{site.leaf(t, 66, x509.ExtKeyUsageClientAuth, later)}, trust.ErrRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(tc.chain, x509.ExtKeyUsageClientAuth)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func createRevokedTable(t *testing.T, db *sitedb.DB) {
	t.Helper()
	if _, err := db.Exec(context.Background(), `CREATE TABLE revoked_certificates (serial TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
}

// A revocation committed through one connection reaches the revoked set kept by another
// (another process, on PostgreSQL) within one second.
func TestWatchRevokedSeesRevocationsWithinASecond(t *testing.T) {
	for _, driver := range sitedbtest.Drivers {
		t.Run(string(driver), func(t *testing.T) { testWatchRevoked(t, driver) })
	}
}

func testWatchRevoked(t *testing.T, driver sitedb.Driver) {
	dsn := sitedbtest.NewDSN(t, driver)
	writer := sitedbtest.Open(t, driver, dsn)
	createRevokedTable(t, writer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := writer.Exec(ctx, `INSERT INTO revoked_certificates (serial) VALUES ('1')`); err != nil {
		t.Fatal(err)
	}
	// The reader is a second handle on the same database, as another server would have.
	reader := sitedbtest.Open(t, driver, dsn)
	set := &trust.RevokedSet{}
	if err := trust.WatchRevoked(ctx, reader, set, time.Hour, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if !set.Contains(big.NewInt(1)) || set.Len() != 1 {
		t.Fatalf("initial load: len %d", set.Len())
	}
	start := time.Now()
	err := writer.Tx(ctx, func(tx *sitedb.Tx) error {
		if _, err := tx.Exec(`INSERT INTO revoked_certificates (serial) VALUES ('424242')`); err != nil {
			return err
		}
		tx.Notify(trust.RevokedChannel, "424242")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !set.Contains(big.NewInt(424242)) {
		select {
		case <-deadline:
			t.Fatalf("revocation not seen within 1s")
		case <-tick.C:
		}
	}
	t.Logf("revocation reached the other handle in %v", time.Since(start))
}

// OnRevoke hears each serial once, when it enters the set (by Add or by a Replace that
// brings it), after Contains reports it; not the serials already there, nor after stop.
func TestOnRevoke(t *testing.T) {
	var set trust.RevokedSet
	set.Add("1")
	var heard []string
	stop := set.OnRevoke(func(sn string) {
		n, _ := new(big.Int).SetString(sn, 10)
		if !set.Contains(n) {
			t.Errorf("told of %s before the set holds it", sn)
		}
		heard = append(heard, sn)
	})
	set.Add("2")
	set.Add("2")
	set.Add("1")
	set.Replace([]string{"1", "2", "3"})
	stop()
	set.Add("4")
	if got := fmt.Sprint(heard); got != "[2 3]" {
		t.Errorf("heard %s, want [2 3]", got)
	}
}
