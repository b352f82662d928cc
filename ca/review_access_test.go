package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"testing"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// A disabled (or unknown) user's admin certificate is not renewed, even one that escaped
// the disable's revocation (a login that raced the disable: EnrollWith checks the user
// before it signs, the disable lists the certificates before the login's is recorded):
// otherwise it could be renewed for as long as the user stays disabled, and works again
// the moment they are enabled.
func TestDisabledUserCertificateIsNotRenewed(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	ctx := context.Background()
	bob := mustLeaf(t, userCert(t, c, "bob", access.HelpDeskOperator))
	// The state the race leaves: bob disabled, his certificate not revoked.
	if err := c.Access().SetDisabled(ctx, "bob", true); err != nil {
		t.Fatal(err)
	}
	csr := csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bob"}})
	if chain, err := c.Renew(ctx, bob, csr); !errors.Is(err, ErrUserDisabled) {
		t.Fatalf("a disabled user's certificate renewed: %v %v", chain, err)
	}
	var ae *api.Error
	if !errors.As(httpError(ErrUserDisabled), &ae) || ae.Status != http.StatusForbidden || ae.Code != "user_disabled" {
		t.Errorf("ErrUserDisabled answers %+v", ae)
	}
	// Enabled again, the same certificate renews.
	if err := c.Access().SetDisabled(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Renew(ctx, bob, csr); err != nil {
		t.Fatalf("an enabled user's renewal: %v", err)
	}
	// A certificate of a name that is no user (an older site's, never bootstrapped) is not
	// renewed either.
	ghost := mustLeaf(t, clientCert(t, c, IssueSpec{Profile: Admin, Subject: "ghost"}))
	if _, err := c.Renew(ctx, ghost, csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ghost"}})); !errors.Is(err, ErrUserDisabled) {
		t.Fatalf("an unknown user's certificate renewal: %v", err)
	}
}

// A PKI Administrator (ManagePKI alone) can issue a site-server certificate for the MP
// role. Every agent takes such a certificate as its management point (the location probe
// demands only urn:ibcm:site:<code>:role:mp), so its holder can serve policy to any
// device it can reach (grant_local_admins included) and, once remote control lands, sign
// session tickets (DESIGN.md §9: "signed by an MP certificate of this site"): more than
// ManagePKI, which DESIGN.md §9 keeps from minting an administrator. The same holds for
// an OCSP-signing certificate (a delegated responder can answer "good" for a revoked
// certificate to every relying party that uses OCSP).
func TestPKIAdministratorCannotMintAManagementPoint(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	srv, pki := serveTLS(t, c, userCert(t, c, "pat", access.PKIAdministrator))
	csr := jsonEscape(string(csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "rogue"}})))
	for _, body := range []string{
		`{"profile":"site-server","role":"mp","subject":"rogue","dns":["mp.corp.example"],"csr":"` + csr + `"}`,
		`{"profile":"ocsp","subject":"rogue","csr":"` + csr + `"}`,
	} {
		if st, e := call(t, pki, "POST", srv.URL+"/v1/admin/certificates", body); st != http.StatusForbidden || e.Error.Code != "forbidden" {
			t.Errorf("a PKI Administrator issuing %s: HTTP %d %+v", body[:40], st, e.Error)
		}
	}
	// A client certificate stays theirs to issue, and a Full Administrator issues servers.
	if st, e := call(t, pki, "POST", srv.URL+"/v1/admin/certificates", `{"profile":"client","subject":"pc-1","csr":"`+csr+`"}`); st != http.StatusOK {
		t.Errorf("a PKI Administrator issuing a client certificate: HTTP %d %+v", st, e.Error)
	}
	_, full := serveTLS(t, c, userCert(t, c, "root", access.FullAdministrator))
	if st, e := call(t, full, "POST", srv.URL+"/v1/admin/certificates", `{"profile":"site-server","role":"mp","subject":"mp2","dns":["mp2.corp.example"],"csr":"`+csr+`"}`); st != http.StatusOK {
		t.Errorf("a Full Administrator issuing an MP certificate: HTTP %d %+v", st, e.Error)
	}
}

// The CA's admin routes refuse the site's own server certificates (CA, MP and DP roles),
// an OCSP-signing certificate and an admin certificate of a name that is no user; a user
// whose certificate was renewed and who is then disabled is refused with both the old and
// the renewed certificate, and cannot renew either.
func TestCAAdminRoutesRefuseNonUsers(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	ctx := context.Background()
	root := userCert(t, c, "root", access.FullAdministrator)
	for _, tc := range []struct {
		name string
		spec IssueSpec
		code string
	}{
		{"ca server", IssueSpec{Profile: SiteServer, Subject: "ca", DNS: []string{"ca.corp.example"}, Role: "ca"}, "not_admin"},
		{"mp server", IssueSpec{Profile: SiteServer, Subject: "mp", DNS: []string{"mp.corp.example"}, Role: "mp"}, "not_admin"},
		{"dp server", IssueSpec{Profile: SiteServer, Subject: "dp", DNS: []string{"dp.corp.example"}, Role: "dp"}, "not_admin"},
		{"ocsp signer", IssueSpec{Profile: OCSP, Subject: "root"}, "wrong_usage"},
		{"no user", IssueSpec{Profile: Admin, Subject: "ghost"}, "forbidden"},
	} {
		srv, hc := serveTLS(t, c, clientCert(t, c, tc.spec))
		if st, e := call(t, hc, "GET", srv.URL+"/v1/admin/users", ""); st != http.StatusForbidden || e.Error.Code != tc.code {
			t.Errorf("%s: HTTP %d %+v, want 403 %s", tc.name, st, e.Error, tc.code)
		}
	}
	ann := userCert(t, c, "ann", access.FullAdministrator)
	key := newKey(t)
	chain, err := c.Renew(ctx, mustLeaf(t, ann), csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ann"}}))
	if err != nil {
		t.Fatal(err)
	}
	renewed := &tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}
	srv, rc := serveTLS(t, c, root)
	if st, e := call(t, rc, "POST", srv.URL+"/v1/admin/users/ann/disable", ""); st != http.StatusOK {
		t.Fatalf("disable: HTTP %d %+v", st, e.Error)
	}
	for name, cert := range map[string]*tls.Certificate{"old": ann, "renewed": renewed} {
		srv, hc := serveTLS(t, c, cert)
		if st, e := call(t, hc, "GET", srv.URL+"/v1/admin/users", ""); st != http.StatusForbidden {
			t.Errorf("ann's %s certificate after the disable: HTTP %d %+v", name, st, e.Error)
		}
		if _, err := c.Renew(ctx, mustLeaf(t, cert), csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ann"}})); err == nil {
			t.Errorf("ann's %s certificate renewed after the disable", name)
		}
	}
}

// A user add refused for its scopes records no user (DESIGN.md §11: no partial state): the
// same add, corrected, then works.
func TestUserAddWithABadScopeRecordsNoUser(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	srv, root := serveTLS(t, c, userCert(t, c, "root", access.FullAdministrator))
	if st, e := call(t, root, "POST", srv.URL+"/v1/admin/users", `{"name":"carol","role":"Help Desk Operator","scopes":["kiosks\u0007"]}`); st != http.StatusBadRequest {
		t.Fatalf("a bad scope: HTTP %d %+v", st, e.Error)
	}
	if st, e := call(t, root, "GET", srv.URL+"/v1/admin/users/carol", ""); st != http.StatusNotFound {
		t.Errorf("the refused add left user carol: HTTP %d %+v", st, e.Error)
	}
	if st, e := call(t, root, "POST", srv.URL+"/v1/admin/users", `{"name":"carol","role":"Help Desk Operator","scopes":["kiosks"]}`); st != http.StatusCreated {
		t.Errorf("the corrected add: HTTP %d %+v", st, e.Error)
	}
}
