package dp

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/http"
	"testing"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// A guest certificate (the CA's guest profile: the guest-only EKU instead of clientAuth,
// urn:ibcm:guest:<session>) is refused by the DP's handshake, where the
// same request with a device certificate gets the content.
func TestGuestCertificateRefused(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	sum := blob(t, r, testData(1000))
	k := newKey(t)
	c := p.make(t, &x509.Certificate{Subject: pkix.Name{CommonName: "alice"}, URIs: uri(wire.GuestURIPrefix + "0123456789abcdef0123456789abcdef"),
		KeyUsage: x509.KeyUsageDigitalSignature, UnknownExtKeyUsage: []asn1.ObjectIdentifier{wire.OIDGuestEKU}}, p.issuing, p.issKey, k)
	guest := p.writeIdentity(t, "guest", c, k, p.issuing)
	for _, listener := range []string{"dp-intranet"} { // the internet listener has the same tlsConfig
		u := r.urls[listener] + "/v1/content/" + sum
		if res := curl(t, p, p.client(t, "device"), http.MethodGet, u); res.err != nil || res.status != http.StatusOK {
			t.Fatalf("%s with a device certificate: %v %d %s", listener, res.err, res.status, res.stderr)
		}
		if res := curl(t, p, guest, http.MethodGet, u); res.err == nil {
			t.Errorf("%s with a guest certificate: %d, want a refused handshake", listener, res.status)
		}
	}
}
