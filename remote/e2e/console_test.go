package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// named issues a certificate with common name cn naming uri.
func (ca *testCA) named(t *testing.T, cn, uri string, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}
}

var serverUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}

// A console ticket's helper end is the MP that signed it, and only that MP's key: no user,
// no MP of another site, no other MP of the site.
func TestDeviceConsoleTicketTakesOnlyItsMP(t *testing.T) {
	ca := newCA(t)
	dev := ca.leaf(t, "urn:ibcm:device:dev-1", x509.ExtKeyUsageClientAuth)
	mp1 := ca.named(t, "mp1", "urn:ibcm:site:TST:role:mp", serverUsage...)
	expect := HelperExpect{Roots: ca.pool, User: "alice", KeyHash: wire.PublicKeyHash(mp1.Leaf), Console: true, MP: "mp1", Site: "TST"}
	console := func(c tls.Certificate) *tls.Config { return ConsoleConfig(c, ca.pool, "dev-1", nil, nil) }
	if serr, cerr := handshake(DeviceConfig(dev, expect), console(mp1)); serr != nil || cerr != nil {
		t.Fatalf("the ticket's MP: %v / %v", serr, cerr)
	}
	// MPs that share one certificate: its common name is the first MP's id, the ticket names
	// the MP that signed it (ticket.Verify has bound the key to the signer).
	shared := expect
	shared.MP = "mp2"
	if serr, cerr := handshake(DeviceConfig(dev, shared), console(mp1)); serr != nil || cerr != nil {
		t.Fatalf("the ticket's MP under a shared certificate: %v / %v", serr, cerr)
	}
	alice := ca.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	aliceKey := expect
	aliceKey.KeyHash = wire.PublicKeyHash(alice.Leaf) // even with the user's own key named
	for name, c := range map[string]struct {
		expect HelperExpect
		cert   tls.Certificate
	}{
		"the user's certificate":           {expect, alice},
		"the user's certificate and key":   {aliceKey, alice},
		"an MP of another site":            {expect, ca.named(t, "mp1", "urn:ibcm:site:OTHER:role:mp", serverUsage...)},
		"another MP of the site":           {expect, ca.named(t, "mp2", "urn:ibcm:site:TST:role:mp", serverUsage...)},
		"another key of the MP":            {expect, ca.named(t, "mp1", "urn:ibcm:site:TST:role:mp", serverUsage...)},
		"a DP of the site named mp1":       {expect, ca.named(t, "mp1", "urn:ibcm:site:TST:role:dp", serverUsage...)},
		"the MP of another CA":             {expect, newCA(t).named(t, "mp1", "urn:ibcm:site:TST:role:mp", serverUsage...)},
		"the MP, the device knows no site": {func() HelperExpect { e := expect; e.Site = ""; return e }(), mp1},
		"the MP, the ticket names no key":  {func() HelperExpect { e := expect; e.KeyHash = ""; return e }(), mp1},
	} {
		serr, cerr := handshake(DeviceConfig(dev, c.expect), console(c.cert))
		if serr == nil && cerr == nil {
			t.Errorf("%s: the device accepted it", name)
		} else if serr != nil && !errors.Is(serr, ErrPeer) {
			t.Errorf("%s: refused for another reason: %v", name, serr)
		}
	}
}

// A normal ticket still refuses the MP's certificate, even the very key a console ticket
// would name.
func TestDeviceNormalTicketRefusesMP(t *testing.T) {
	ca := newCA(t)
	dev := ca.leaf(t, "urn:ibcm:device:dev-1", x509.ExtKeyUsageClientAuth)
	mp1 := ca.named(t, "mp1", "urn:ibcm:site:TST:role:mp", serverUsage...)
	expect := HelperExpect{Roots: ca.pool, User: "alice", KeyHash: wire.PublicKeyHash(mp1.Leaf), MP: "mp1", Site: "TST"}
	serr, cerr := handshake(DeviceConfig(dev, expect), ConsoleConfig(mp1, ca.pool, "dev-1", nil, nil))
	if serr == nil && cerr == nil || serr != nil && !errors.Is(serr, ErrPeer) {
		t.Fatalf("a normal ticket with the MP's certificate: %v / %v", serr, cerr)
	}
}
