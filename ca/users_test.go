package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// callJSON is call that also decodes a successful answer into out.
func callJSON(t *testing.T, hc *http.Client, method, url, body string, out any) (int, wire.Error) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e wire.Error
	if resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	} else {
		_ = json.Unmarshal(b, &e)
	}
	return resp.StatusCode, e
}

// A user added with a role gets a one-use login token for their own key; their
// certificate then carries the role's permissions and no more; disabling them revokes
// their certificates and unspent login tokens, and their requests are refused at once.
func TestUserLifecycle(t *testing.T) {
	for _, d := range sitedbtest.Drivers {
		t.Run(string(d), func(t *testing.T) {
			db := sitedbtest.Open(t, d, sitedbtest.NewDSN(t, d))
			c := newTestCA(t, db)
			ctx := context.Background()
			srv, root := serveTLS(t, c, userCert(t, c, "root", access.FullAdministrator))
			var made wire.UserToken
			if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/users",
				`{"name":"alice","display_name":"Alice Martin","title":"Help desk","org":"IT","role":"help desk operator","scopes":["kiosks"]}`, &made); st != http.StatusCreated {
				t.Fatalf("user add: HTTP %d %+v", st, e.Error)
			}
			if made.Token == "" || made.User.Name != "alice" || len(made.User.Roles) != 1 || made.User.Roles[0] != (wire.Assignment{Role: access.HelpDeskOperator, Scope: "kiosks"}) {
				t.Fatalf("user add answered %+v", made)
			}
			// ibcm login: the key is made on the user's machine, the token names the user.
			key := newKey(t)
			if _, err := c.Enroll(ctx, made.Token, string(Admin), csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "mallory"}})); err == nil {
				t.Error("the login token enrolled another name")
			}
			chain, err := c.Enroll(ctx, made.Token, string(Admin), csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}}))
			if err != nil {
				t.Fatalf("login: %v", err)
			}
			if _, err := c.Enroll(ctx, made.Token, string(Admin), csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}})); err == nil {
				t.Error("the login token was used twice")
			}
			_, alice := serveTLS(t, c, &tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key})
			if st, e := call(t, alice, "GET", srv.URL+"/v1/admin/tokens", ""); st != http.StatusForbidden || e.Error.Code != "forbidden" {
				t.Errorf("a help desk operator listing tokens: HTTP %d %+v", st, e.Error)
			}
			if st, e := call(t, alice, "POST", srv.URL+"/v1/admin/users/alice/assign", `{"role":"Full Administrator"}`); st != http.StatusForbidden {
				t.Errorf("a help desk operator making herself an administrator: HTTP %d %+v", st, e.Error)
			}
			// A second login token (a new machine) while enabled; disabling revokes it too.
			var again wire.UserToken
			if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/users/alice/token", "", &again); st != http.StatusOK || again.Token == "" {
				t.Fatalf("new login token: HTTP %d %+v", st, e.Error)
			}
			var dis wire.UserDisabled
			if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/users/alice/disable", "", &dis); st != http.StatusOK || !dis.User.Disabled {
				t.Fatalf("disable: HTTP %d %+v %+v", st, e.Error, dis)
			}
			if len(dis.Revoked) != 1 || dis.Revoked[0] != wire.FormatSerial(chain[0].SerialNumber) {
				t.Errorf("disable revoked %v, want the login certificate %s", dis.Revoked, wire.FormatSerial(chain[0].SerialNumber))
			}
			if rec, err := c.Get(ctx, chain[0].SerialNumber.String()); err != nil || rec.Status != "revoked" {
				t.Errorf("alice's certificate after disable: %+v, %v", rec.Status, err)
			}
			if _, err := c.Enroll(ctx, again.Token, string(Admin), csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}})); err == nil {
				t.Error("an unspent login token of a disabled user enrolled")
			}
			var st int
			if st, _ = call(t, root, "POST", srv.URL+"/v1/admin/users/root/disable", ""); st != http.StatusConflict {
				t.Errorf("disabling yourself: HTTP %d", st)
			}
			if st, _ = call(t, root, "POST", srv.URL+"/v1/admin/users/alice/token", ""); st != http.StatusConflict {
				t.Errorf("a login token for a disabled user: HTTP %d", st)
			}
			var u wire.User
			if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/users/alice/enable", "", &u); st != http.StatusOK || u.Disabled {
				t.Errorf("enable: HTTP %d %+v %+v", st, e.Error, u)
			}
		})
	}
}

// Bad requests to the user and role routes get their own JSON errors, and change nothing.
func TestUserRoutesRefuseBadInput(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	srv, root := serveTLS(t, c, userCert(t, c, "root", access.FullAdministrator))
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"no role", "POST", "/v1/admin/users", `{"name":"bob"}`, 400, "bad_request"},
		{"unknown role", "POST", "/v1/admin/users", `{"name":"bob","role":"Wizard"}`, 404, "unknown_role"},
		{"bad name", "POST", "/v1/admin/users", `{"name":"bob smith","role":"Read-only Analyst"}`, 400, "bad_request"},
		{"bad ttl", "POST", "/v1/admin/users", `{"name":"bob","role":"Read-only Analyst","ttl":"2"}`, 400, "bad_request"},
		{"ttl too long", "POST", "/v1/admin/users", `{"name":"bob","role":"Read-only Analyst","ttl":"9000h"}`, 400, "bad_request"},
		{"unknown field", "POST", "/v1/admin/users", `{"name":"bob","role":"Read-only Analyst","admin":true}`, 400, "bad_request"},
		{"existing user", "POST", "/v1/admin/users", `{"name":"root","role":"Read-only Analyst"}`, 409, "exists"},
		{"unknown user", "GET", "/v1/admin/users/nobody", ``, 404, "unknown_user"},
		{"unknown permission", "POST", "/v1/admin/roles", `{"name":"X","permissions":["Root"]}`, 400, "bad_request"},
		{"no permissions", "POST", "/v1/admin/roles", `{"name":"X"}`, 400, "bad_request"},
		{"built-in name", "POST", "/v1/admin/roles", `{"name":"PKI administrator","permissions":["ReadAudit"]}`, 409, "built_in_role"},
		{"delete built-in", "DELETE", "/v1/admin/roles/Full%20Administrator", ``, 409, "built_in_role"},
		{"assign unknown role", "POST", "/v1/admin/users/root/assign", `{"role":"Wizard"}`, 404, "unknown_role"},
		{"token body garbage", "POST", "/v1/admin/users/root/token", `{"ttl":`, 400, "bad_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, e := call(t, root, tc.method, srv.URL+tc.path, tc.body); st != tc.status || e.Error.Code != tc.code {
				t.Errorf("HTTP %d %+v, want %d %s", st, e.Error, tc.status, tc.code)
			}
		})
	}
	if us, err := c.Access().Users(context.Background()); err != nil || len(us) != 1 {
		t.Errorf("users after the refusals: %d, %v", len(us), err)
	}
}

// Custom roles: made from permission names, shown with what they imply, refused for
// deletion while assigned.
func TestCustomRoles(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	srv, root := serveTLS(t, c, userCert(t, c, "root", access.FullAdministrator))
	var ro wire.Role
	if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/roles", `{"name":"Kiosk support","permissions":["FullControl","readdevices"]}`, &ro); st != http.StatusCreated {
		t.Fatalf("role create: HTTP %d %+v", st, e.Error)
	}
	if strings.Join(ro.Permissions, ",") != "ViewScreen,FullControl,ReadDevices" {
		t.Errorf("role permissions %v", ro.Permissions)
	}
	var u wire.UserToken
	if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/users", `{"name":"kim","role":"kiosk support","scopes":["kiosks"]}`, &u); st != http.StatusCreated {
		t.Fatalf("user add: HTTP %d %+v", st, e.Error)
	}
	if st, e := call(t, root, "DELETE", srv.URL+"/v1/admin/roles/Kiosk%20support", ""); st != http.StatusConflict || e.Error.Code != "role_in_use" {
		t.Errorf("deleting an assigned role: HTTP %d %+v", st, e.Error)
	}
	var after wire.User
	if st, e := callJSON(t, root, "POST", srv.URL+"/v1/admin/users/kim/unassign", `{"role":"Kiosk support"}`, &after); st != http.StatusOK || len(after.Roles) != 0 {
		t.Errorf("unassign: HTTP %d %+v %+v", st, e.Error, after)
	}
	var roles []wire.Role
	if st, _ := callJSON(t, root, "DELETE", srv.URL+"/v1/admin/roles/kiosk%20support", "", &map[string]string{}); st != http.StatusOK {
		t.Errorf("deleting an unassigned role: HTTP %d", st)
	}
	if st, _ := callJSON(t, root, "GET", srv.URL+"/v1/admin/roles", "", &roles); st != http.StatusOK || len(roles) != len(access.BuiltInRoles) {
		t.Errorf("roles after delete: %d", len(roles))
	}
}

// An admin-profile token that is not a login token of an enabled user (an unbound one
// left from an older site, one for a name that is no user) enrolls nothing.
func TestAdminTokenNeedsAnEnabledUser(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	ctx := context.Background()
	for _, subject := range []string{"", "ghost"} {
		secret, _, err := c.CreateToken(ctx, TokenSpec{Profile: Admin, Subject: subject}, "admin:old")
		if err != nil {
			t.Fatal(err)
		}
		cn := subject
		if cn == "" {
			cn = "root"
		}
		if _, err := c.Enroll(ctx, secret, string(Admin), csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}})); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("admin token bound to %q: %v, want ErrTokenInvalid", subject, err)
		}
	}
}
