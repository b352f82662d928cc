package helper

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
)

// security review 2: the CRL the helper fetches before a direct connection. Whatever the
// MP answers that is not a list the device certificate's issuer signed (a list of another
// CA, a forged one in the issuer's name, garbage, an oversized answer, an error) leaves the
// session port untried or refused, and the session goes over the relay, whose MP checks the
// device itself; it never goes on past the handshake with a device it could not check.
func TestDirectNeedsTheIssuersCRL(t *testing.T) {
	list := func(t *testing.T, name string, key *ecdsa.PrivateKey, issuer *x509.Certificate) []byte {
		if issuer == nil { // a CA certificate of that name and key, as a forger would make
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
				NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
			if err != nil {
				t.Fatal(err)
			}
			issuer, _ = x509.ParseCertificate(der)
		}
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(2), ThisUpdate: time.Now().Add(-time.Minute),
			NextUpdate: time.Now().Add(time.Hour)}, issuer, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cases := []struct {
		name   string
		answer func(t *testing.T, p *pki) func(http.ResponseWriter)
		reason string // what the direct attempt says
	}{
		{"forged in the issuer's name", func(t *testing.T, p *pki) func(http.ResponseWriter) {
			der := list(t, "test root", otherKey, nil)
			return func(w http.ResponseWriter) { _, _ = w.Write(der) }
		}, "not signed by the certificate's issuer"},
		{"another CA's", func(t *testing.T, p *pki) func(http.ResponseWriter) {
			der := list(t, "another root", otherKey, nil)
			return func(w http.ResponseWriter) { _, _ = w.Write(der) }
		}, "not of the certificate's issuer"},
		{"stale (its next update has passed)", func(t *testing.T, p *pki) func(http.ResponseWriter) {
			der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(3), ThisUpdate: time.Now().Add(-2 * time.Hour),
				NextUpdate: time.Now().Add(-time.Hour)}, p.root, p.key)
			if err != nil {
				t.Fatal(err)
			}
			return func(w http.ResponseWriter) { _, _ = w.Write(der) }
		}, "stale"},
		{"garbage", func(t *testing.T, p *pki) func(http.ResponseWriter) {
			return func(w http.ResponseWriter) { _, _ = w.Write([]byte("<html>not a CRL</html>")) }
		}, "not tried"},
		{"oversized", func(t *testing.T, p *pki) func(http.ResponseWriter) {
			big := append(p.crl(t), bytes.Repeat([]byte{0}, e2e.MaxCRL)...)
			return func(w http.ResponseWriter) { _, _ = w.Write(big) }
		}, "larger than"},
		{"the MP failing", func(t *testing.T, p *pki) func(http.ResponseWriter) {
			return func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"error":{"code":"unavailable","message":"database down"}}`))
			}
		}, "not tried"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPKI(t)
			dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
			m := newFakeMP(t, p, dev)
			m.start.Direct = []string{directListener(t, dev)}
			m.start.RelayAfterMS = 2000
			p.crlAnswer = c.answer(t, p)
			s, err := m.client(t, p).Connect(ctxT(t), m.start, frame.Greeting{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			conn := s.Connection
			if conn.Transport != wire.TransportRelay || len(conn.Others) != 1 || !strings.Contains(conn.Others[0].Reason, c.reason) {
				t.Errorf("transport %s, others %+v", conn.Transport, conn.Others)
			}
		})
	}
}
