// Package catest owns a real site CA behind its real HTTPS API on 127.0.0.1, for the tests
// of the packages that talk to it (the agent, the CLIs, later the roles). It uses a SQLite
// site database in the test's temporary directory.
package catest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
)

// Hierarchy is the CA of site TST, made once per test binary: key generation is the slow
// part of a CA. Tests that run their own CA over their own store share it.
var Hierarchy = sync.OnceValue(func() *ca.Hierarchy {
	h, err := ca.NewHierarchy("TST", ca.P256, time.Now(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return h
})

// Server is a running test CA.
type Server struct {
	CA      *ca.CA
	URL     string            // https://127.0.0.1:port
	Pin     string            // SHA-256 of the root, lower-case hex, as ibcm-client --root-sha256 takes it
	Revoked *trust.RevokedSet // the set the API's verifier checks; add to it to revoke in memory
	DB      *sitedb.DB        // the site database (security codes are made in it, as an MP does)
}

// Start serves a CA of site TST on a TLS listener that presents leaf, issuing CA and root
// and requests client certificates, as `ibcm site up` does. It stops when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWrapped(t, nil)
}

// StartWrapped is Start with the CA's HTTPS handler passed through wrap (when not nil),
// for tests that disturb the conversation, such as dropping the connection after the CA
// has answered.
func StartWrapped(t testing.TB, wrap func(http.Handler) http.Handler) *Server {
	t.Helper()
	return StartWith(t, wrap, nil)
}

// StartWith is StartWrapped with the CA's options changed by opts (when not nil), such as
// SecurityCodes.
func StartWith(t testing.TB, wrap func(http.Handler) http.Handler, opts func(*ca.Options)) *Server {
	t.Helper()
	ctx := context.Background()
	db, err := sitedb.Open(ctx, sitedb.SQLite, filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatalf("opening the site database: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	h := Hierarchy()
	o := ca.Options{SiteCode: "TST", Hierarchy: h, PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop()}
	if opts != nil {
		opts(&o)
	}
	c, err := ca.New(ctx, db, o)
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ca"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.SiteServer, Subject: "ca", DNS: []string{"127.0.0.1"}, Role: "ca"}, csr, "admin:test")
	if err != nil {
		t.Fatalf("issuing the CA's server certificate: %v", err)
	}
	revoked := &trust.RevokedSet{}
	v := &trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{h.Root}, []*x509.Certificate{h.Issuing}), Revoked: revoked}
	handler := c.Handler(v)
	if wrap != nil {
		handler = wrap(handler)
	}
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, h.Issuing.Raw, h.Root.Raw}, PrivateKey: key}},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &Server{CA: c, URL: srv.URL, Pin: ca.Fingerprint(h.Root), Revoked: revoked, DB: db}
}

// Token makes an enrollment token (client profile when spec is zero) and returns its secret.
func (s *Server) Token(t testing.TB, spec ca.TokenSpec) string {
	t.Helper()
	if spec.Profile == "" {
		spec.Profile = ca.Client
	}
	secret, _, err := s.CA.CreateToken(context.Background(), spec, "admin:test")
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return secret
}

// ServerTLS is a TLS server configuration with a site-server certificate of role (CN
// role+"1", SAN 127.0.0.1) issued by the test CA, asking for any client certificate.
func (s *Server) ServerTLS(t testing.TB, role string) *tls.Config {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: role + "1"}}, key)
	chain, err := s.CA.Issue(context.Background(), ca.IssueSpec{Profile: ca.SiteServer, Subject: role + "1", DNS: []string{"127.0.0.1"}, Role: role}, csr, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, Hierarchy().Issuing.Raw}, PrivateKey: key}},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
}
