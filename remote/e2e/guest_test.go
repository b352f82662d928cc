package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// guestLeaf is a guest certificate as the CA's guest profile makes it: the guest EKU only.
func (ca *testCA) guestLeaf(t *testing.T, session string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(wire.GuestURIPrefix + session)
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "alice"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, UnknownExtKeyUsage: []asn1.ObjectIdentifier{wire.OIDGuestEKU},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}
}

// The helper of a session with an unenrolled device takes the guest certificate of that
// session and nothing else; the helper of a device's session never takes a guest.
func TestHelperOfAGuestSession(t *testing.T) {
	ca := newCA(t)
	alice := ca.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	expect := HelperExpect{Roots: ca.pool, User: "alice", KeyHash: wire.PublicKeyHash(alice.Leaf)}
	const session = "0123456789abcdef0123456789abcdef"
	guest := ca.guestLeaf(t, session)
	if serr, cerr := handshake(DeviceConfig(guest, expect), HelperConfig(alice, ca.pool, wire.GuestURIPrefix+session, nil, nil)); serr != nil || cerr != nil {
		t.Fatalf("the session's guest: %v / %v", serr, cerr)
	}
	for name, tc := range map[string]struct {
		server tls.Certificate
		device string
	}{
		"the guest of another session":       {ca.guestLeaf(t, "ffffffffffffffffffffffffffffffff"), wire.GuestURIPrefix + session},
		"a device certificate for the guest": {ca.leaf(t, wire.GuestURIPrefix+session, x509.ExtKeyUsageClientAuth), wire.GuestURIPrefix + session},
		"a guest of another CA":              {newCA(t).guestLeaf(t, session), wire.GuestURIPrefix + session},
		"a guest for a device's session":     {guest, "dev-1"},
	} {
		if _, cerr := handshake(DeviceConfig(tc.server, expect), HelperConfig(alice, ca.pool, tc.device, nil, nil)); cerr == nil {
			t.Errorf("%s: the helper accepted it", name)
		}
	}
}
