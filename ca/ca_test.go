package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// testHierarchy is made once: key generation is the slow part of a CA.
var testHierarchy = sync.OnceValue(func() *Hierarchy {
	h, err := NewHierarchy("TST", P256, time.Now(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return h
})

func newTestCA(t testing.TB, db *sitedb.DB) *CA {
	t.Helper()
	c, err := New(context.Background(), db, Options{
		SiteCode: "TST", Hierarchy: testHierarchy(), PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func extension(t testing.TB, id asn1.ObjectIdentifier, v any) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: id, Value: b}
}

func mustToken(t *testing.T, c *CA, spec TokenSpec) string {
	t.Helper()
	secret, _, err := c.CreateToken(context.Background(), spec, "admin:test")
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return secret
}

func TestEnrollIssuesClientProfile(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		ctx := context.Background()
		tok := mustToken(t, c, TokenSpec{Profile: Client, Subject: "pc-01"})
		chain, err := c.Enroll(ctx, tok, "", csrPEM(t, newKey(t), &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "pc-01"}, DNSNames: []string{"pc-01.corp.example"},
		}))
		if err != nil {
			t.Fatalf("Enroll: %v", err)
		}
		leaf := chain[0]
		if got := leaf.ExtKeyUsage; len(got) != 1 || got[0] != x509.ExtKeyUsageClientAuth {
			t.Errorf("EKU = %v, want clientAuth only", got)
		}
		if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
			t.Errorf("KU = %v, want digitalSignature", leaf.KeyUsage)
		}
		if leaf.IsCA {
			t.Error("leaf is a CA")
		}
		if len(leaf.URIs) != 1 || ProfileOf(leaf) != Client {
			t.Errorf("URIs = %v, want one urn:ibcm:device", leaf.URIs)
		}
		if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 30*24*time.Hour || d > 30*24*time.Hour+2*time.Minute {
			t.Errorf("validity = %v, want 30 days", d)
		}
		if len(leaf.CRLDistributionPoints) != 1 || len(leaf.OCSPServer) != 1 || len(leaf.IssuingCertificateURL) != 1 {
			t.Errorf("CDP/AIA missing: %v %v %v", leaf.CRLDistributionPoints, leaf.OCSPServer, leaf.IssuingCertificateURL)
		}
		pool := x509.NewCertPool()
		pool.AddCert(c.Root())
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("verify: %v", err)
		}
		rec, err := c.Get(ctx, leaf.SerialNumber.String())
		if err != nil || rec.Status != StatusValid || rec.Profile != Client || rec.IssuedBy[:6] != "token:" {
			t.Errorf("Get = %+v, %v", rec, err)
		}
		if _, err := c.Enroll(ctx, tok, "", csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-01"}})); !errors.Is(err, ErrTokenUsed) {
			t.Errorf("second use: err = %v, want ErrTokenUsed", err)
		}
	})
}

func TestEnrollRefusesWideningRequests(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	serverAuth := extension(t, oidExtExtKeyUsage, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}})
	caTrue := extension(t, oidExtBasicConstraints, struct{ IsCA bool }{true})
	cases := []struct {
		name    string
		key     crypto.Signer
		tmpl    x509.CertificateRequest
		profile string
		want    error
	}{
		{"serverAuth", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}, ExtraExtensions: []pkix.Extension{serverAuth}}, "", ErrForbiddenUsage},
		{"CA true", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}, ExtraExtensions: []pkix.Extension{caTrue}}, "", ErrForbiddenUsage},
		{"extra DNS", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}, DNSNames: []string{"pc.corp.example", "mp.corp.example"}}, "", ErrForbiddenSAN},
		{"foreign DNS", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}, DNSNames: []string{"mp.corp.example"}}, "", ErrForbiddenSAN},
		{"URI SAN", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}, DNSNames: nil, URIs: nil, EmailAddresses: []string{"a@b.c"}}, "", ErrForbiddenSAN},
		{"RSA 1024", rsaKey, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}}, "", ErrWeakKey},
		{"P-224", p224, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}}, "", ErrWeakKey},
		{"wrong profile", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}}, "admin", ErrWrongProfile},
		{"unknown profile", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}}, "root", ErrBadProfile},
		{"bad name", nil, x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc 01/x"}}, "", ErrBadSubject},
	}
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				tok := mustToken(t, c, TokenSpec{Profile: Client})
				key := tc.key
				if key == nil {
					key = newKey(t)
				}
				_, err := c.Enroll(context.Background(), tok, tc.profile, csrPEM(t, key, &tc.tmpl))
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				recs, err := c.List(context.Background(), Filter{Profile: Client})
				if err != nil || len(recs) != 0 {
					t.Errorf("a refused request left %d certificates (%v)", len(recs), err)
				}
				toks, _ := c.ListTokens(context.Background())
				for _, tk := range toks {
					if tk.UsesLeft != tk.Uses {
						t.Errorf("a refused request consumed token %s", tk.ID)
					}
				}
			})
		}
	})
}

func TestTokenRules(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		ctx := context.Background()
		csr := func(cn string) []byte {
			return csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}})
		}
		bound := mustToken(t, c, TokenSpec{Profile: Client, Subject: "pc-07"})
		if _, err := c.Enroll(ctx, bound, "", csr("pc-08")); !errors.Is(err, ErrSubjectMismatch) {
			t.Errorf("bound token, other subject: %v", err)
		}
		if _, err := c.Enroll(ctx, "ibcm_nope", "", csr("pc-08")); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("unknown token: %v", err)
		}
		expiring := mustToken(t, c, TokenSpec{Profile: Client, TTL: time.Minute})
		real := c.now
		c.now = func() time.Time { return real().Add(2 * time.Minute) }
		if _, err := c.Enroll(ctx, expiring, "", csr("pc-09")); !errors.Is(err, ErrTokenExpired) {
			t.Errorf("expired token: %v", err)
		}
		c.now = real
		revoked, rt, err := c.CreateToken(ctx, TokenSpec{Profile: Client}, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.RevokeToken(ctx, revoked); err == nil || strings.Contains(err.Error(), revoked) {
			t.Errorf("revoking by secret: %v (must fail without echoing the secret)", err)
		}
		if err := c.RevokeToken(ctx, rt.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Enroll(ctx, revoked, "", csr("pc-10")); !errors.Is(err, ErrTokenRevoked) {
			t.Errorf("revoked token: %v", err)
		}
		bulk := mustToken(t, c, TokenSpec{Profile: Client, Uses: 3})
		for i := 0; i < 3; i++ {
			if _, err := c.Enroll(ctx, bulk, "", csr("pc-bulk")); err != nil {
				t.Fatalf("bulk use %d: %v", i, err)
			}
		}
		if _, err := c.Enroll(ctx, bulk, "", csr("pc-bulk")); !errors.Is(err, ErrTokenUsed) {
			t.Errorf("bulk token 4th use: %v", err)
		}
	})
}

func TestRacingEnrollmentsOneTokenOneWinner(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		for round := 0; round < 5; round++ {
			tok := mustToken(t, c, TokenSpec{Profile: Client})
			csrs := [][]byte{
				csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "racer"}}),
				csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "racer"}}),
			}
			errs := make([]error, 2)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range csrs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, errs[i] = c.Enroll(context.Background(), tok, "", csrs[i])
				}()
			}
			close(start)
			wg.Wait()
			wins := 0
			for _, err := range errs {
				switch {
				case err == nil:
					wins++
				case !errors.Is(err, ErrTokenUsed):
					t.Fatalf("round %d: loser got %v, want ErrTokenUsed", round, err)
				}
			}
			if wins != 1 {
				t.Fatalf("round %d: %d winners, want 1 (%v)", round, wins, errs)
			}
		}
		recs, err := c.List(context.Background(), Filter{})
		if err != nil || len(recs) != 5 {
			t.Errorf("%d certificates recorded, want 5 (%v)", len(recs), err)
		}
	})
}

func TestRevokeCRLOCSPAndRenew(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		c := newTestCA(t, db)
		ctx := context.Background()
		if err := c.Prepare(ctx); err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		issue := func(cn string) *x509.Certificate {
			chain, err := c.Enroll(ctx, mustToken(t, c, TokenSpec{Profile: Client}), "", csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}))
			if err != nil {
				t.Fatal(err)
			}
			return chain[0]
		}
		good, bad := issue("good"), issue("bad")
		before, err := c.CRL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Revoke(ctx, bad.SerialNumber.String(), "keyCompromise"); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		if err := c.Revoke(ctx, bad.SerialNumber.String(), "keyCompromise"); !errors.Is(err, ErrAlreadyRevoked) {
			t.Errorf("second revoke: %v", err)
		}
		if err := c.Revoke(ctx, good.SerialNumber.String(), "certificateHold"); !errors.Is(err, ErrBadReason) {
			t.Errorf("hold: %v", err)
		}
		der, err := c.CRL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		old, _ := x509.ParseRevocationList(before)
		if crl.Number.Cmp(old.Number) <= 0 {
			t.Errorf("CRL number %v not above %v", crl.Number, old.Number)
		}
		if err := crl.CheckSignatureFrom(c.Issuing()); err != nil {
			t.Errorf("CRL signature: %v", err)
		}
		if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(bad.SerialNumber) != 0 ||
			crl.RevokedCertificateEntries[0].ReasonCode != 1 {
			t.Errorf("CRL entries = %+v", crl.RevokedCertificateEntries)
		}
		for _, tc := range []struct {
			cert *x509.Certificate
			want int
		}{{good, ocsp.Good}, {bad, ocsp.Revoked}} {
			reqDER, err := ocsp.CreateRequest(tc.cert, c.Issuing(), nil)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := ocsp.ParseRequest(reqDER)
			respDER, err := c.OCSP(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := ocsp.ParseResponseForCert(respDER, tc.cert, c.Issuing())
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != tc.want {
				t.Errorf("OCSP status of %s = %d, want %d", tc.cert.Subject.CommonName, resp.Status, tc.want)
			}
		}
		if _, err := c.Renew(ctx, bad, nil); !errors.Is(err, ErrRevoked) {
			t.Errorf("renew revoked: %v", err)
		}
		newKey := newKey(t)
		chain, err := c.Renew(ctx, good, csrPEM(t, newKey, &x509.CertificateRequest{}))
		if err != nil {
			t.Fatalf("renew: %v", err)
		}
		if chain[0].SerialNumber.Cmp(good.SerialNumber) == 0 || chain[0].Subject.CommonName != "good" ||
			!chain[0].PublicKey.(*ecdsa.PublicKey).Equal(newKey.Public()) || ProfileOf(chain[0]) != Client {
			t.Errorf("renewed cert: serial %v cn %q profile %q", chain[0].SerialNumber, chain[0].Subject.CommonName, ProfileOf(chain[0]))
		}
		if chain[0].URIs[0].String() != good.URIs[0].String() {
			t.Errorf("renewal changed the device id: %v -> %v", good.URIs, chain[0].URIs)
		}
		rec, err := c.Get(ctx, chain[0].SerialNumber.String())
		if err != nil || rec.RenewedFrom != good.SerialNumber.String() {
			t.Errorf("renewed record: %+v %v", rec, err)
		}
	})
}
