package mp

import (
	"context"
	"fmt"
	"github.com/ibcm-project/ibcm/internal/access/accesstest"
	"net/http"
	"slices"
	"testing"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Every admin route of the MP × every built-in role: allowed exactly when the role has
// the route's permission, else 403 "forbidden"; a device certificate never gets through;
// and every route the MP's source registers is in the table.
func TestAdminRoutesCheckTheirPermission(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	id := deviceID(pc)
	none := "00000000000000000000000000000000"
	routes := []struct {
		method, path, body string
		perm               access.Permission
	}{
		{"GET", "/v1/admin/devices", "", access.ReadDevices},
		{"GET", "/v1/admin/devices/" + id, "", access.ReadDevices},
		{"GET", "/v1/admin/devices/" + id + "/messages", "", access.ReadDevices},
		{"GET", "/v1/admin/devices/" + id + "/remote", "", access.ReadDevices},
		{"GET", "/v1/admin/devices/" + id + "/deployments", "", access.ReadDevices},
		// The web console's logins: any user for themself (no console here: 404).
		{"POST", "/v1/admin/console/links", "{}", ""},
		{"POST", "/v1/admin/console/revoke", "{}", ""},
		{"POST", "/v1/admin/devices/" + id + "/block", "{", access.ManageDevices},
		{"POST", "/v1/admin/devices/" + id + "/unblock", "{", access.ManageDevices},
		{"POST", "/v1/admin/devices/" + id + "/notify", `{"type":"bogus"}`, access.ManageDevices},
		{"GET", "/v1/admin/groups", "", access.ReadDevices},
		{"POST", "/v1/admin/groups", `{}`, access.ManageDevices},
		{"POST", "/v1/admin/groups/none/members", `{}`, access.ManageDevices},
		{"DELETE", "/v1/admin/groups/none/members/none", "", access.ManageDevices},
		{"GET", "/v1/admin/policies", "", access.ManagePolicy},
		{"GET", "/v1/admin/policies/none", "", access.ManagePolicy},
		{"PUT", "/v1/admin/policies/none", `{}`, access.ManagePolicy},
		// Sessions: "" is a route every user may call (their own sessions; the session's
		// helper), refused further in by what the session says.
		{"POST", "/v1/admin/sessions", "{", access.ViewScreen},
		{"POST", "/v1/admin/sessions/codes", "{", access.OfferRemoteAssistance},
		{"GET", "/v1/admin/sessions", "", ""},
		{"GET", "/v1/admin/sessions/" + none, "", ""},
		{"POST", "/v1/admin/sessions/" + none + "/end", "", ""},
		{"POST", "/v1/admin/sessions/" + none + "/join", "", access.ViewScreen},
		{"GET", "/v1/admin/sessions/" + none + "/recording", "", access.ReadAudit},
		{"GET", "/v1/admin/sessions/" + none + "/relay", "", access.ViewScreen},
		{"POST", "/v1/admin/content", "{", access.ManageContent},
		{"GET", "/v1/admin/content", "", access.ManageContent},
		{"GET", "/v1/admin/content/none/1", "", access.ManageContent},
		{"DELETE", "/v1/admin/content/none/1", "", access.ManageContent},
		{"POST", "/v1/admin/content/none/1/distribute", "{", access.ManageContent},
		{"GET", "/v1/admin/dps", "", access.ManageContent},
		{"POST", "/v1/admin/deployments", "{", access.ManageContent},
		{"GET", "/v1/admin/deployments", "", access.ManageContent},
		{"GET", "/v1/admin/deployments/" + none[:16], "", access.ManageContent},
		{"DELETE", "/v1/admin/deployments/" + none[:16], "", access.ManageContent},
	}
	var table []accesstest.Route
	for _, rt := range routes {
		table = append(table, accesstest.Route{Method: rt.method, Path: rt.path})
	}
	accesstest.CheckCovered(t, table)
	for i, r := range append(slices.Clone(access.BuiltInRoles), access.Role{Name: ""}) {
		cert := f.user(t, fmt.Sprintf("user-%d", i), r.Name)
		hc := f.client(&cert)
		for _, rt := range routes {
			t.Run(r.Name+" "+rt.method+" "+rt.path, func(t *testing.T) {
				var body any
				if rt.body != "" {
					body = rt.body
				}
				status, e := call(t, hc, rt.method, f.intranet+rt.path, body, nil)
				denied := status == http.StatusForbidden && e.Error.Code == "forbidden"
				if want := rt.perm == "" || r.Permissions.Has(rt.perm); denied == want {
					t.Errorf("HTTP %d %+v; role has %s: %v", status, e.Error, rt.perm, want)
				}
			})
		}
	}
	for _, rt := range routes {
		var body any
		if rt.body != "" {
			body = rt.body
		}
		if status, e := call(t, f.client(&pc), rt.method, f.intranet+rt.path, body, nil); status != http.StatusForbidden || e.Error.Code != "not_admin" {
			t.Errorf("device certificate on %s %s: HTTP %d %+v", rt.method, rt.path, status, e.Error)
		}
	}
}

// A role over a device group reaches the devices of that group and no other: the list
// holds only them, another device is "not found", and a scoped assignment never gives a
// site-wide permission (here: changing group membership, which would widen the scope).
func TestScopedAssignment(t *testing.T) {
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
	var ds []wire.Device
	if status, e := call(t, hc, "GET", f.intranet+"/v1/admin/devices", nil, &ds); status != 200 || len(ds) != 1 || ds[0].ID != kiosk {
		t.Errorf("device list in scope: HTTP %d %+v %v", status, e.Error, ds)
	}
	if status, _ := call(t, hc, "GET", f.intranet+"/v1/admin/devices/"+kiosk, nil, nil); status != 200 {
		t.Errorf("the device in scope: HTTP %d", status)
	}
	if status, e := call(t, hc, "GET", f.intranet+"/v1/admin/devices/"+office, nil, nil); status != http.StatusNotFound || e.Error.Code != "not_found" {
		t.Errorf("a device out of scope: HTTP %d %+v", status, e.Error)
	}
	if status, e := call(t, hc, "POST", f.intranet+"/v1/admin/groups/kiosks/members", `{"device_id":"`+office+`"}`, nil); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("a scoped user adding a device to their group: HTTP %d %+v", status, e.Error)
	}
	var gs []wire.Group
	if status, _ := call(t, hc, "GET", f.intranet+"/v1/admin/groups", nil, &gs); status != 200 || len(gs) != 1 || gs[0].Name != "kiosks" {
		t.Errorf("groups in scope: %v", gs)
	}
	// Disabled: refused at once, on a connection already open.
	if err := f.ca.Access().SetDisabled(ctx, "kim", true); err != nil {
		t.Fatal(err)
	}
	if status, e := call(t, hc, "GET", f.intranet+"/v1/admin/devices/"+kiosk, nil, nil); status != http.StatusForbidden || e.Error.Code != "forbidden" {
		t.Errorf("a disabled user: HTTP %d %+v", status, e.Error)
	}
}
