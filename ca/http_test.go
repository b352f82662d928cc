package ca

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// serveTLS runs the CA's HTTPS API on a real TLS listener; it returns a client that
// presents cert (when given) and trusts the site root.
func serveTLS(t *testing.T, c *CA, cert *tls.Certificate) (*httptest.Server, *http.Client) {
	t.Helper()
	key := newKey(t)
	chain, err := c.Issue(context.Background(), IssueSpec{Profile: SiteServer, Subject: "ca", DNS: []string{"127.0.0.1"}, Role: "ca"},
		csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ca"}}), "test")
	if err != nil {
		t.Fatal(err)
	}
	v := &trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{c.Root()}, []*x509.Certificate{c.Issuing()}), Revoked: &trust.RevokedSet{}}
	srv := httptest.NewUnstartedServer(c.Handler(v))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}},
		ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(c.Root())
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return srv, &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func clientCert(t *testing.T, c *CA, spec IssueSpec) *tls.Certificate {
	t.Helper()
	key := newKey(t)
	chain, err := c.Issue(context.Background(), spec, csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: spec.Subject}}), "test")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}
}

func call(t *testing.T, hc *http.Client, method, url, body string) (int, wire.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e
}

func TestAdminAPIRequiresAnAdminCertificate(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	device := clientCert(t, c, IssueSpec{Profile: Client, Subject: "pc-1"})
	admin := clientCert(t, c, IssueSpec{Profile: Admin, Subject: "alice"})
	cases := []struct {
		name   string
		cert   *tls.Certificate
		status int
		code   string
	}{
		{"no certificate", nil, 401, "client_certificate_required"},
		{"device certificate", device, 403, "not_admin"},
		{"admin certificate", admin, 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, hc := serveTLS(t, c, tc.cert)
			status, e := call(t, hc, http.MethodGet, srv.URL+"/v1/admin/certificates", "")
			if status != tc.status || e.Error.Code != tc.code {
				t.Fatalf("HTTP %d %+v, want %d %q", status, e.Error, tc.status, tc.code)
			}
		})
	}
	srv, hc := serveTLS(t, c, admin)
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"unknown route", "GET", "/v1/nothing", "", 404, "not_found"},
		{"bad token profile", "POST", "/v1/admin/tokens", `{"profile":"root"}`, 400, "bad_profile"},
		{"bad ttl", "POST", "/v1/admin/tokens", `{"profile":"client","ttl":"soon"}`, 400, "bad_request"},
		{"unknown field", "POST", "/v1/admin/tokens", `{"profile":"client","admin":true}`, 400, "bad_request"},
		{"unknown serial", "GET", "/v1/admin/certificates/ABCDEF", "", 404, "not_found"},
		{"serial not hex", "GET", "/v1/admin/certificates/12G4", "", 400, "bad_serial"},
		{"negative serial", "GET", "/v1/admin/certificates/-0A", "", 400, "bad_serial"},
		{"serial too long", "GET", "/v1/admin/certificates/" + strings.Repeat("A", wire.MaxSerialLen+1), "", 400, "bad_serial"},
		{"revoke a bad serial", "POST", "/v1/admin/certificates/5A:F/revoke", `{"reason":"superseded"}`, 400, "bad_serial"},
		{"bad reason", "POST", "/v1/admin/certificates/" + wire.FormatSerial(mustLeaf(t, device).SerialNumber) + "/revoke", `{"reason":"certificateHold"}`, 400, "bad_reason"},
		{"site-server without role", "POST", "/v1/admin/certificates", `{"profile":"site-server","subject":"x","dns":["x.corp"],"csr":"` +
			jsonEscape(string(csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}))) + `"}`, 400, "bad_profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e := call(t, hc, tc.method, srv.URL+tc.path, tc.body)
			if status != tc.status || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Fatalf("HTTP %d %+v, want %d %q", status, e.Error, tc.status, tc.code)
			}
		})
	}
}

func mustLeaf(t *testing.T, c *tls.Certificate) *x509.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

func TestPublicListener(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	if err := c.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	leaf := mustLeaf(t, clientCert(t, c, IssueSpec{Profile: Client, Subject: "pc-2"}))
	srv := httptest.NewServer(c.PublicHandler())
	defer srv.Close()
	reqDER, _ := ocsp.CreateRequest(leaf, c.Issuing(), nil)

	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	// RFC 6960 GET: base64 in the path, URL-escaped
	resp, body := get("/ocsp/" + strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(base64.StdEncoding.EncodeToString(reqDER)))
	if resp.StatusCode != 200 {
		t.Fatalf("OCSP GET: HTTP %d", resp.StatusCode)
	}
	if r, err := ocsp.ParseResponseForCert(body, leaf, c.Issuing()); err != nil || r.Status != ocsp.Good {
		t.Fatalf("OCSP GET response: %v %+v", err, r)
	}
	// a certificate of another CA is not ours to answer for
	other := newTestCAOther(t)
	foreign := mustLeaf(t, clientCert(t, other, IssueSpec{Profile: Client, Subject: "x"}))
	fDER, _ := ocsp.CreateRequest(foreign, other.Issuing(), nil)
	pr, err := http.Post(srv.URL+"/ocsp", "application/ocsp-request", strings.NewReader(string(fDER)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(pr.Body)
	pr.Body.Close()
	if string(b) != string(ocsp.UnauthorizedErrorResponse) {
		t.Errorf("foreign certificate: got %x, want unauthorized", b)
	}
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/ocsp/not-base64!", 400},
		{"/ocsp/" + base64.StdEncoding.EncodeToString([]byte("garbage")), 400},
		{"/crl/" + c.IssuerID() + ".crl", 200},
		{"/crl/other.crl", 404},
		{"/ca/" + c.IssuerID() + ".crt", 200},
		{"/ca/../../etc/passwd", 404},
		{"/healthz", 200},
	} {
		if resp, _ := get(tc.path); resp.StatusCode != tc.status {
			t.Errorf("GET %s: HTTP %d, want %d", tc.path, resp.StatusCode, tc.status)
		}
	}
	big := strings.NewReader(strings.Repeat("a", maxOCSPRequest+1))
	if r, err := http.Post(srv.URL+"/ocsp", "application/ocsp-request", big); err != nil || r.StatusCode != 400 {
		t.Errorf("oversized OCSP POST: %v %v", r, err)
	}
}

// newTestCAOther is a CA of another site, for certificates the site must not trust.
func newTestCAOther(t *testing.T) *CA {
	t.Helper()
	h, err := NewHierarchy("OTH", P256, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c, err := New(context.Background(), db, Options{SiteCode: "OTH", Hierarchy: h, PublicURL: "http://127.0.0.1:2", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The admin API writes every serial as openssl prints it, for certificates this CA issued,
// and finds a certificate by what openssl prints, in every form wire.ParseSerial takes.
func TestAdminSerialsAreOpenSSLs(t *testing.T) {
	openssl := peertest.Need(t, "openssl")
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	admin := clientCert(t, c, IssueSpec{Profile: Admin, Subject: "alice"})
	srv, hc := serveTLS(t, c, admin)
	get := func(path string, out any) int {
		t.Helper()
		resp, err := hc.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == 200 {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}
	// Random serials: about one in sixteen starts with a zero nibble (wire's own test
	// covers those for sure).
	for i := range 8 {
		leaf := mustLeaf(t, clientCert(t, c, IssueSpec{Profile: Client, Subject: fmt.Sprintf("pc-%d", i)}))
		file := filepath.Join(t.TempDir(), "c.pem")
		if err := os.WriteFile(file, EncodeCerts(leaf), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "x509", "-in", file, "-noout", "-serial").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
		line := strings.TrimSpace(string(out))
		hex := strings.TrimPrefix(line, "serial=")
		var colons []string
		for j := 0; j < len(hex); j += 2 {
			colons = append(colons, strings.ToLower(hex[j:j+2]))
		}
		for _, form := range []string{hex, line, "0x" + hex, strings.Join(colons, ":")} {
			var ct wire.Certificate
			if status := get("/v1/admin/certificates/"+url.PathEscape(form), &ct); status != 200 || ct.Serial != hex {
				t.Errorf("GET by %q: HTTP %d serial %q, want openssl's %q", form, status, ct.Serial, hex)
			}
		}
		if status := get("/v1/admin/certificates/"+leaf.SerialNumber.String(), new(wire.Certificate)); status != 404 {
			t.Errorf("GET by the decimal serial: HTTP %d, want 404 (digits are hex)", status)
		}
	}
	var list []wire.Certificate
	if status := get("/v1/admin/certificates", &list); status != 200 || len(list) == 0 {
		t.Fatalf("list: HTTP %d, %d certificates", status, len(list))
	}
	for _, ct := range list {
		if n, err := wire.ParseSerial(ct.Serial); err != nil || wire.FormatSerial(n) != ct.Serial {
			t.Errorf("list shows serial %q, not as openssl prints it", ct.Serial)
		}
	}
}
