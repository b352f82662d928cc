package ca

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ibcm-project/ibcm/internal/access/accesstest"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/access"
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

// userCert makes name a user with role over the whole site and issues them an admin
// certificate.
func userCert(t *testing.T, c *CA, name, role string) *tls.Certificate {
	t.Helper()
	ctx := context.Background()
	if err := c.Access().AddUser(ctx, access.User{Name: name}, "test"); err != nil && !errors.Is(err, access.ErrExists) {
		t.Fatal(err)
	}
	if role != "" {
		if err := c.Access().Assign(ctx, name, role, nil, "test"); err != nil {
			t.Fatal(err)
		}
	}
	return clientCert(t, c, IssueSpec{Profile: Admin, Subject: name})
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
	admin := userCert(t, c, "alice", access.FullAdministrator)
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
	srv, hc := serveTLS(t, c, userCert(t, c, "alice", access.FullAdministrator))
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

// Every admin route of the CA × every built-in role: allowed exactly when the role has
// the route's permission, else 403 "forbidden"; a user without any role and a device
// certificate never get through.
func TestAdminRoutesCheckTheirPermission(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	routes := []struct {
		method, path, body string
		perm               access.Permission
	}{
		{"POST", "/v1/admin/tokens", `{"profile":"client","uses":1}`, access.ManagePKI},
		{"GET", "/v1/admin/tokens", "", access.ManagePKI},
		{"POST", "/v1/admin/tokens/nope/revoke", "", access.ManagePKI},
		{"POST", "/v1/admin/certificates", `{"profile":"client"}`, access.ManagePKI},
		{"GET", "/v1/admin/certificates", "", access.ManagePKI},
		{"GET", "/v1/admin/certificates/01", "", access.ManagePKI},
		{"POST", "/v1/admin/certificates/01/revoke", `{"reason":"superseded"}`, access.ManagePKI},
		{"GET", "/v1/admin/crl", "", access.ManagePKI},
		{"POST", "/v1/admin/users", `{}`, access.ManageAccess},
		{"GET", "/v1/admin/users", "", access.ManageAccess},
		{"GET", "/v1/admin/users/nobody", "", access.ManageAccess},
		{"POST", "/v1/admin/users/nobody/token", "", access.ManageAccess},
		{"POST", "/v1/admin/users/nobody/disable", "", access.ManageAccess},
		{"POST", "/v1/admin/users/nobody/enable", "", access.ManageAccess},
		{"POST", "/v1/admin/users/nobody/assign", `{"role":"Read-only Analyst"}`, access.ManageAccess},
		{"POST", "/v1/admin/users/nobody/unassign", `{"role":"Read-only Analyst"}`, access.ManageAccess},
		{"GET", "/v1/admin/roles", "", access.ManageAccess},
		{"GET", "/v1/admin/roles/nothing", "", access.ManageAccess},
		{"POST", "/v1/admin/roles", `{}`, access.ManageAccess},
		{"DELETE", "/v1/admin/roles/nothing", "", access.ManageAccess},
		{"POST", "/v1/admin/content/sign", "{", access.ManageContent},
	}
	// Every admin route the CA registers is in the table, so a new one cannot skip it.
	var table []accesstest.Route
	for _, rt := range routes {
		table = append(table, accesstest.Route{Method: rt.method, Path: rt.path})
	}
	accesstest.CheckCovered(t, table)
	clients := map[string]*http.Client{}
	var srv *httptest.Server
	for i, r := range append(slices.Clone(access.BuiltInRoles), access.Role{Name: ""}) {
		name := fmt.Sprintf("user-%d", i)
		var hc *http.Client
		srv, hc = serveTLS(t, c, userCert(t, c, name, r.Name))
		clients[r.Name] = hc
		for _, rt := range routes {
			t.Run(r.Name+" "+rt.method+" "+rt.path, func(t *testing.T) {
				status, e := call(t, hc, rt.method, srv.URL+rt.path, rt.body)
				denied := status == http.StatusForbidden && e.Error.Code == "forbidden"
				if want := r.Permissions.Has(rt.perm); denied == want {
					t.Errorf("HTTP %d %+v; role has %s: %v", status, e.Error, rt.perm, want)
				}
			})
		}
	}
	_, device := serveTLS(t, c, clientCert(t, c, IssueSpec{Profile: Client, Subject: "pc-1"}))
	for _, rt := range routes {
		if status, e := call(t, device, rt.method, srv.URL+rt.path, rt.body); status != http.StatusForbidden || e.Error.Code != "not_admin" {
			t.Errorf("device certificate on %s %s: HTTP %d %+v", rt.method, rt.path, status, e.Error)
		}
	}
	// The PKI routes refuse the admin profile, even to a Full Administrator.
	for _, body := range []string{`{"profile":"admin","uses":1}`} {
		if status, e := call(t, clients[access.FullAdministrator], "POST", srv.URL+"/v1/admin/tokens", body); status != http.StatusForbidden || e.Error.Code != "user_profile" {
			t.Errorf("admin-profile token: HTTP %d %+v", status, e.Error)
		}
	}
	key := newKey(t)
	csr, _ := json.Marshal(string(csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "mallory"}})))
	if status, e := call(t, clients[access.PKIAdministrator], "POST", srv.URL+"/v1/admin/certificates", `{"profile":"admin","subject":"mallory","csr":`+string(csr)+`}`); status != http.StatusForbidden || e.Error.Code != "user_profile" {
		t.Errorf("admin certificate from the PKI route: HTTP %d %+v", status, e.Error)
	}
	// A re-enroll token hands out a device's identity: ManagePKI alone is not enough.
	if status, e := call(t, clients[access.PKIAdministrator], "POST", srv.URL+"/v1/admin/tokens", `{"profile":"client","device_id":"x"}`); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("re-enroll token by a PKI administrator: HTTP %d %+v", status, e.Error)
	}
}

// The holders of valid admin certificates become Full Administrators only while the site
// has no user (a new site's first admin, an older site's admins); a later admin
// certificate gets nothing by itself, and a revoked one never counted.
func TestBootstrapAccess(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	ctx := context.Background()
	issue := func(name string) *x509.Certificate {
		chain, err := c.Issue(ctx, IssueSpec{Profile: Admin, Subject: name}, csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}), "site-init")
		if err != nil {
			t.Fatal(err)
		}
		return chain[0]
	}
	gone := issue("gone")
	if err := c.Revoke(ctx, gone.SerialNumber.String(), "superseded"); err != nil {
		t.Fatal(err)
	}
	issue("root")
	if err := c.BootstrapAccess(ctx); err != nil {
		t.Fatal(err)
	}
	if g, err := c.Access().Grants(ctx, "root"); err != nil || g.Site != access.AllPermissions {
		t.Errorf("first admin: %+v, %v", g, err)
	}
	if _, err := c.Access().Grants(ctx, "gone"); !errors.Is(err, access.ErrUnknownUser) {
		t.Errorf("holder of a revoked admin certificate: %v", err)
	}
	issue("eve")
	if err := c.BootstrapAccess(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Access().Grants(ctx, "eve"); !errors.Is(err, access.ErrUnknownUser) {
		t.Errorf("a later admin certificate made a user: %v", err)
	}
}
