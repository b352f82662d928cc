package ticket

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

type pki struct {
	roots *x509.CertPool
	root  *x509.Certificate
	key   crypto.Signer
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &pki{roots: pool, root: root, key: key}
}

// leaf issues a certificate naming uri with the given usages.
func (p *pki) leaf(t *testing.T, uri string, usage ...x509.ExtKeyUsage) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func sample(now time.Time) Ticket {
	return Ticket{ID: NewID(), Session: NewID(), Device: "dev-1", Helper: "alice", HelperKey: strings.Repeat("ab", 32),
		Card: Card{User: "alice", DisplayName: "Alice"}, Role: RoleHelper, Mode: ModeControl, Modes: []string{ModeView, ModeControl},
		MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
}

func TestVerify(t *testing.T) {
	p := newPKI(t)
	mp, mpKey := p.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	now := time.Now()
	opts := VerifyOptions{Roots: p.roots, SiteCode: "TST", Device: "dev-1", Now: now}
	good, err := Sign(sample(now), mpKey, []*x509.Certificate{mp})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := s.Verify(opts)
	if err != nil || tk.Helper != "alice" {
		t.Fatalf("Verify = %v", err)
	}
	var seen Seen
	if err := seen.Use(tk, now); err != nil {
		t.Fatal(err)
	}
	if err := seen.Use(tk, now); !errors.Is(err, ErrReplayed) || Code(err) != "ticket_replayed" {
		t.Fatalf("replay: %v", err)
	}

	dp, dpKey := p.leaf(t, "urn:ibcm:site:TST:role:dp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	other, otherKey := p.leaf(t, "urn:ibcm:site:OTH:role:mp", x509.ExtKeyUsageServerAuth)
	dev, devKey := p.leaf(t, "urn:ibcm:device:dev-1", x509.ExtKeyUsageClientAuth)
	foreign := newPKI(t)
	fmp, fmpKey := foreign.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth)
	signWith := func(tk Ticket, c *x509.Certificate, k crypto.Signer) string {
		s, err := Sign(tk, k, []*x509.Certificate{c})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	expired := sample(now.Add(-10 * time.Minute))
	forOther := sample(now)
	forOther.Device = "dev-2"
	// a genuine MP signature with the MP's certificate swapped for another one of the site
	swapped := strings.Split(good, ".")
	swapped[2] = strings.Split(signWith(sample(now), dp, dpKey), ".")[2]
	for _, tc := range []struct {
		name, ticket string
		revoked      bool
		want         error
	}{
		{"signed by a DP of this site", signWith(sample(now), dp, dpKey), false, ErrSigner},
		{"signed by an MP of another site", signWith(sample(now), other, otherKey), false, ErrSigner},
		{"signed by the device itself", signWith(sample(now), dev, devKey), false, ErrSigner},
		{"signed under foreign roots", signWith(sample(now), fmp, fmpKey), false, ErrSigner},
		{"MP chain swapped", strings.Join(swapped, "."), false, ErrSigner},
		{"signer revoked", good, true, ErrRevoked},
		{"for another device", signWith(forOther, mp, mpKey), false, ErrOtherDevice},
		{"expired", signWith(expired, mp, mpKey), false, ErrExpired},
		{"payload changed", strings.Replace(good, strings.Split(good, ".")[1], strings.Split(signWith(forOther, mp, mpKey), ".")[1], 1), false, ErrSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(tc.ticket)
			if err == nil {
				o := opts
				if tc.revoked {
					o.Revoked = func(c *x509.Certificate) bool { return c.SerialNumber.Cmp(mp.SerialNumber) == 0 }
				}
				_, err = s.Verify(o)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{"", "v1", "v2.a.b.c", "v1.a.b.c", "v1..." + strings.Repeat("A", MaxLen), "v1.e30.AA.AA"} {
		if _, err := Parse(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%.20q) = %v, want ErrMalformed", s, err)
		}
	}
	bad := sample(time.Now())
	bad.ExpiresAt = bad.IssuedAt.Add(time.Hour)
	if err := bad.Check(); !errors.Is(err, ErrMalformed) {
		t.Errorf("an hour-long ticket: %v", err)
	}
	bad = sample(time.Now())
	bad.Mode = ModeElevated
	if err := bad.Check(); !errors.Is(err, ErrMalformed) {
		t.Errorf("a mode outside the allowed modes: %v", err)
	}
	bad = sample(time.Now())
	bad.Console, bad.Direct = true, true
	if err := bad.Check(); !errors.Is(err, ErrMalformed) {
		t.Errorf("a direct console ticket: %v", err)
	}
	bad.Direct, bad.MP = false, ""
	if err := bad.Check(); !errors.Is(err, ErrMalformed) {
		t.Errorf("a console ticket naming no MP: %v", err)
	}
	good := sample(time.Now())
	good.Console = true
	if err := good.Check(); err != nil {
		t.Errorf("a console ticket over the relay: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("v1.e30.AA.AA")
	f.Add("v1.eyJpZCI6IjEifQ.MIIB.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		if st, err := Parse(s); err == nil {
			if err := st.Ticket.Check(); err != nil {
				t.Fatalf("Parse passed a ticket Check refuses: %v", err)
			}
		}
	})
}

// A console ticket names its signer's own key as the helper's end: the MP that signed it
// is the end of the end-to-end TLS, and no other key, whatever else the ticket says.
func TestVerifyConsoleKeyIsTheSigner(t *testing.T) {
	p := newPKI(t)
	mp, mpKey := p.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	other, _ := p.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	user, _ := p.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	now := time.Now()
	opts := VerifyOptions{Roots: p.roots, SiteCode: "TST", Device: "dev-1", Now: now}
	verify := func(key string) error {
		tk := sample(now)
		tk.Console, tk.HelperKey = true, key
		signed, err := Sign(tk, mpKey, []*x509.Certificate{mp})
		if err != nil {
			t.Fatal(err)
		}
		s, err := Parse(signed)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Verify(opts)
		return err
	}
	if err := verify(wire.PublicKeyHash(mp)); err != nil {
		t.Errorf("the signer's key: %v", err)
	}
	for name, c := range map[string]*x509.Certificate{"another MP's key": other, "the user's key": user} {
		if err := verify(wire.PublicKeyHash(c)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
