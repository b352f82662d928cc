package mp

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The site's own server certificates (CA, MP and DP roles) are not users: each is refused
// the admin routes, and so is an admin certificate of a name that is no user. A scoped
// Help Desk Operator reaches no device outside their group through the block, notify or
// messages routes, whatever the id's spelling (escaped, with a dot segment).
func TestAdminRoutesRefuseServersAndOutOfScope(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	ctx := context.Background()
	var ids []string
	for _, name := range []string{"kiosk-1", "office-1"} {
		pc := f.device(t, name)
		if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
			t.Fatal("whoami")
		}
		ids = append(ids, deviceID(pc))
	}
	kiosk, office := ids[0], ids[1]
	for _, role := range []string{"ca", "mp", "dp"} {
		cert := f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: role, DNS: []string{role + ".corp.example"}, Role: role})
		for _, path := range []string{"/v1/admin/devices", "/v1/admin/policies", "/v1/admin/devices/" + office} {
			if status, e := call(t, f.client(&cert), "GET", f.intranet+path, nil, nil); status != http.StatusForbidden || e.Error.Code != "not_admin" {
				t.Errorf("%s server certificate on %s: HTTP %d %+v", role, path, status, e.Error)
			}
		}
	}
	ghost := f.issue(t, ca.IssueSpec{Profile: ca.Admin, Subject: "ghost"})
	if status, e := call(t, f.client(&ghost), "GET", f.intranet+"/v1/admin/devices", nil, nil); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("an admin certificate of no user: HTTP %d %+v", status, e.Error)
	}
	if err := f.mp.CreateGroup(ctx, wire.Group{Name: "kiosks"}); err != nil {
		t.Fatal(err)
	}
	if err := f.mp.SetMember(ctx, "kiosks", kiosk, true); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Access().AddUser(ctx, access.User{Name: "kim"}, "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.ca.Access().Assign(ctx, "kim", access.HelpDeskOperator, []string{"kiosks"}, "test"); err != nil {
		t.Fatal(err)
	}
	cert := f.user(t, "kim", "")
	hc := f.client(&cert)
	if status, e := call(t, hc, "GET", f.intranet+"/v1/admin/devices/"+url.PathEscape(kiosk)+"/messages", nil, nil); status != 200 {
		t.Fatalf("messages of the device in scope: HTTP %d %+v", status, e.Error)
	}
	for _, id := range []string{office, url.PathEscape(office), fmt.Sprintf("%%%02X", office[0]) + office[1:]} {
		if status, e := call(t, hc, "GET", f.intranet+"/v1/admin/devices/"+id+"/messages", nil, nil); status != http.StatusNotFound {
			t.Errorf("messages of %s out of scope: HTTP %d %+v", id, status, e.Error)
		}
		for _, r := range []string{"block", "unblock", "notify"} {
			if status, e := call(t, hc, "POST", f.intranet+"/v1/admin/devices/"+id+"/"+r, `{"type":"renew-cert"}`, nil); status != http.StatusForbidden || e.Error.Code != "forbidden" {
				t.Errorf("%s of %s by a help desk operator: HTTP %d %+v", r, id, status, e.Error)
			}
		}
	}
	var d wire.Device
	if status, _ := call(t, hc, "GET", f.intranet+"/v1/admin/devices/"+kiosk+"/../"+office, nil, &d); status == 200 && d.ID == office {
		t.Errorf("a dot segment reached the device out of scope")
	}
	if f.mp.isBlocked(office) {
		t.Error("the device out of scope was blocked")
	}
}
