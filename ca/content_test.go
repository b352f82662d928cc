package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func testManifest(path string) string {
	h := strings.Repeat("ab", 32)
	return fmt.Sprintf(`{"name":"tool","version":"1.0","chunk_size":65536,"files":[{"path":%q,"size":10,"mode":420,"sha256":%q,"chunks":[%q]}],`+
		`"install":{"command":"./setup.sh","timeout":"5m","success_codes":[0,2]},"created":%q}`, path, h, h, time.Now().UTC().Format(time.RFC3339))
}

// The CA signs manifests for a ManageContent user with a content signer of its own: the
// result verifies against the site's root; bad manifests and other users are refused.
func TestContentSign(t *testing.T) {
	for _, d := range sitedbtest.Drivers {
		t.Run(string(d), func(t *testing.T) {
			db := sitedbtest.Open(t, d, sitedbtest.NewDSN(t, d))
			c := newTestCA(t, db)
			srv, content := serveTLS(t, c, userCert(t, c, "carol", access.ContentAdministrator))
			helpdesk := clientOf(c, userCert(t, c, "hank", access.HelpDeskOperator))
			if err := c.Prepare(context.Background()); err != nil {
				t.Fatal(err)
			}
			var sm wire.SignedManifest
			if st, e := callJSON(t, content, "POST", srv.URL+"/v1/admin/content/sign", testManifest("bin/tool"), &sm); st != http.StatusOK {
				t.Fatalf("sign: HTTP %d %+v", st, e.Error)
			}
			roots := x509.NewCertPool()
			roots.AddCert(c.Root())
			m, err := manifest.Verify(&sm, manifest.Trust{Roots: roots, SiteCode: "TST"}, manifest.Hash(sm.Manifest))
			if err != nil {
				t.Fatalf("the signed manifest does not verify: %v", err)
			}
			if m.Name != "tool" || m.Files[0].Path != "bin/tool" {
				t.Fatalf("signed %+v", m)
			}
			leaf, _ := x509.ParseCertificate(sm.Chain[0])
			if ProfileOf(leaf) != ContentSigner || leaf.Subject.CommonName != "content-signer" || len(leaf.ExtKeyUsage) != 1 ||
				leaf.ExtKeyUsage[0] != x509.ExtKeyUsageCodeSigning || leaf.KeyUsage != x509.KeyUsageDigitalSignature ||
				len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:ibcm:site:TST:role:content" {
				t.Fatalf("content signer: profile %s, CN %q, EKU %v, KU %v, URIs %v", ProfileOf(leaf), leaf.Subject.CommonName, leaf.ExtKeyUsage, leaf.KeyUsage, leaf.URIs)
			}
			if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 364*24*time.Hour {
				t.Fatalf("content signer lives %s, want a year", life)
			}
			// Another site's verifier refuses it.
			if _, err := manifest.Verify(&sm, manifest.Trust{Roots: roots, SiteCode: "OTH"}, ""); err == nil {
				t.Fatal("a manifest of site TST verified for site OTH")
			}
			// The same key signs the next one (kept, not made again), also after a restart.
			var sm2 wire.SignedManifest
			callJSON(t, content, "POST", srv.URL+"/v1/admin/content/sign", testManifest("a/b"), &sm2)
			c2 := newTestCA(t, db)
			_, chain, err := c2.contentSigner(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if string(sm2.Chain[0]) != string(sm.Chain[0]) || string(chain[0].Raw) != string(sm.Chain[0]) {
				t.Fatal("the content signer changed between two signatures or across a restart")
			}
			var n int
			var keyPEM []byte
			if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM content_signers`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("%d content signers stored (%v), want 1", n, err)
			}
			_ = db.QueryRow(context.Background(), `SELECT key_pem FROM content_signers`).Scan(&keyPEM)
			if !strings.Contains(string(keyPEM), "ENCRYPTED PRIVATE KEY") {
				t.Fatalf("the content signer's key is not encrypted at rest: %.40q", keyPEM)
			}

			for _, tc := range []struct {
				name, body string
				status     int
				code       string
			}{
				{"path escaping", testManifest("../x"), 400, "invalid_manifest"},
				{"absolute path", testManifest("/etc/passwd"), 400, "invalid_manifest"},
				{"unknown field", strings.Replace(testManifest("x"), `"name"`, `"evil":1,"name"`, 1), 400, "invalid_manifest"},
				{"not JSON", "{", 400, "invalid_manifest"},
				{"trailing data", testManifest("x") + "{}", 400, "invalid_manifest"},
				{"too large", `{"name":"` + strings.Repeat("a", manifest.MaxSigned) + `"}`, 413, "too_large"},
			} {
				if st, e := call(t, content, "POST", srv.URL+"/v1/admin/content/sign", tc.body); st != tc.status || e.Error.Code != tc.code {
					t.Errorf("%s: HTTP %d %q, want %d %q", tc.name, st, e.Error.Code, tc.status, tc.code)
				}
			}
			if st, e := call(t, helpdesk, "POST", srv.URL+"/v1/admin/content/sign", testManifest("x")); st != http.StatusForbidden || e.Error.Code != "forbidden" {
				t.Errorf("a user without ManageContent: HTTP %d %q, want 403 forbidden", st, e.Error.Code)
			}
		})
	}
}

// The PKI routes and Issue refuse the content-signer profile: only the CA makes one.
func TestContentSignerProfileRefused(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	srv, root := serveTLS(t, c, userCert(t, c, "root", access.FullAdministrator))
	key := newKey(t)
	csr := csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "content-signer"}})
	body, _ := json.Marshal(wire.IssueRequest{Profile: string(ContentSigner), Subject: "content-signer", CSR: string(csr)})
	if st, e := call(t, root, "POST", srv.URL+"/v1/admin/certificates", string(body)); st != http.StatusBadRequest || e.Error.Code != "bad_profile" {
		t.Errorf("ca issue --profile content-signer: HTTP %d %q, want 400 bad_profile", st, e.Error.Code)
	}
	if st, e := call(t, root, "POST", srv.URL+"/v1/admin/tokens", `{"profile":"content-signer"}`); st != http.StatusBadRequest || e.Error.Code != "bad_profile" {
		t.Errorf("ca token create --profile content-signer: HTTP %d %q, want 400 bad_profile", st, e.Error.Code)
	}
	if _, err := c.Issue(context.Background(), IssueSpec{Profile: ContentSigner, Subject: "content-signer"}, csr, "admin:root"); err == nil {
		t.Error("Issue made a content-signer certificate")
	}
}

// clientOf returns a client that trusts c's root and presents cert.
func clientOf(c *CA, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(c.Root())
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{*cert}}}}
}

// A content signer is replaced 30 days before it ends, kept until then (across restarts),
// and replaced when its key does not open with the CA's password.
func TestContentSignerRenewal(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	ctx := context.Background()
	open := func(at time.Time, password string) *CA {
		c, err := New(ctx, db, Options{SiteCode: "TST", Hierarchy: testHierarchy(), PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop(),
			Now: func() time.Time { return at }, KeyPassword: []byte(password)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serial := func(c *CA) string {
		t.Helper()
		if err := c.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		_, chain, err := c.contentSigner(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return chain[0].SerialNumber.String()
	}
	now := time.Now()
	a := serial(open(now, "pw"))
	if b := serial(open(now.Add(300*24*time.Hour), "pw")); b != a {
		t.Error("a content signer with 65 days left was replaced")
	}
	b := serial(open(now.Add(340*24*time.Hour), "pw"))
	if b == a {
		t.Error("a content signer with 25 days left was kept")
	}
	if again := serial(open(now.Add(341*24*time.Hour), "pw")); again != b {
		t.Error("the renewed content signer was not kept across a restart")
	}
	if other := serial(open(now.Add(341*24*time.Hour), "another")); other == b {
		t.Error("a content signer whose key does not open was used")
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM content_signers`).Scan(&n); err != nil || n != 3 {
		t.Errorf("%d content signers stored, want 3 (%v)", n, err)
	}
}
