package access

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

func TestImplications(t *testing.T) {
	for _, tc := range []struct {
		grant Permission
		want  []Permission
	}{
		{ViewScreen, []Permission{ViewScreen}},
		{FullControl, []Permission{ViewScreen, FullControl}},
		{Elevation, []Permission{ViewScreen, FullControl, Elevation}},
		{Unattended, []Permission{ViewScreen, FullControl, Elevation, Unattended}},
		{ManagePKI, []Permission{ManagePKI}},
	} {
		t.Run(string(tc.grant), func(t *testing.T) {
			if got := SetOf(tc.grant).List(); !slices.Equal(got, tc.want) {
				t.Errorf("%s grants %v, want %v", tc.grant, got, tc.want)
			}
		})
	}
	if SetOf(ViewScreen).Has(FullControl) {
		t.Error("ViewScreen implies FullControl")
	}
	if Set(0).Has(Permission("")) || AllPermissions.Has(Permission("Root")) {
		t.Error("a set has a permission that does not exist")
	}
}

func TestParseSet(t *testing.T) {
	s, err := ParseSet("readdevices, Elevation")
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "ViewScreen,FullControl,Elevation,ReadDevices" {
		t.Errorf("parsed %q", s)
	}
	if back, err := ParseSet(s.String()); err != nil || back != s {
		t.Errorf("round trip: %v, %v", back, err)
	}
	for _, bad := range []string{"", "ReadDevices,", "Root", "ReadDevices,,ReadAudit"} {
		if _, err := ParseSet(bad); err == nil {
			t.Errorf("ParseSet(%q) accepted", bad)
		}
	}
}

func TestBuiltInRoles(t *testing.T) {
	want := map[string][]Permission{
		FullAdministrator:    Permissions,
		PKIAdministrator:     {ManagePKI},
		HelpDeskOperator:     {ViewScreen, FullControl, Elevation, Unattended, OfferRemoteAssistance, ReadDevices},
		ContentAdministrator: {ManageContent},
		ReadOnlyAnalyst:      {ReadDevices, ReadAudit},
	}
	for _, r := range BuiltInRoles {
		if got := r.Permissions.List(); !slices.Equal(got, want[r.Name]) {
			t.Errorf("%s: %v, want %v", r.Name, got, want[r.Name])
		}
		delete(want, r.Name)
	}
	if len(want) > 0 {
		t.Errorf("built-in roles missing: %v", want)
	}
}

func TestStore(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		s, err := Open(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.AddUser(ctx, User{Name: "alice", DisplayName: "Alice Martin", Title: "Help desk", Org: "IT"}, "admin:root"); err != nil {
			t.Fatal(err)
		}
		if err := s.AddUser(ctx, User{Name: "alice"}, "admin:root"); !errors.Is(err, ErrExists) {
			t.Errorf("adding alice twice: %v", err)
		}
		for _, bad := range []User{{Name: ""}, {Name: "-x"}, {Name: "a b"}, {Name: "bob", Title: "a\nb"}} {
			if err := s.AddUser(ctx, bad, "admin:root"); !errors.Is(err, ErrInvalid) {
				t.Errorf("adding %+v: %v", bad, err)
			}
		}
		if err := s.CreateRole(ctx, Role{Name: "full administrator", Permissions: SetOf(ReadDevices)}); !errors.Is(err, ErrBuiltIn) {
			t.Errorf("a custom role named like a built-in one: %v", err)
		}
		if err := s.CreateRole(ctx, Role{Name: "Nothing"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("a role without permissions: %v", err)
		}
		if err := s.CreateRole(ctx, Role{Name: "Site PKI", Permissions: SetOf(ManagePKI, ViewScreen)}); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateRole(ctx, Role{Name: "SITE pki", Permissions: SetOf(ManagePKI)}); !errors.Is(err, ErrExists) {
			t.Errorf("a second role of the same name: %v", err)
		}
		if err := s.Assign(ctx, "nobody", HelpDeskOperator, nil, "admin:root"); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("assigning to an unknown user: %v", err)
		}
		if err := s.Assign(ctx, "alice", "No Such Role", nil, "admin:root"); !errors.Is(err, ErrUnknownRole) {
			t.Errorf("assigning an unknown role: %v", err)
		}
		// A help desk operator over one group, and a custom role over another: the site-wide
		// permission of that role is not granted by a scoped assignment.
		if err := s.Assign(ctx, "alice", HelpDeskOperator, []string{"kiosks"}, "admin:root"); err != nil {
			t.Fatal(err)
		}
		if err := s.Assign(ctx, "alice", "site pki", []string{"labs"}, "admin:root"); err != nil {
			t.Fatal(err)
		}
		if err := s.Assign(ctx, "alice", HelpDeskOperator, []string{"kiosks"}, "admin:root"); err != nil {
			t.Errorf("assigning twice: %v", err)
		}
		g, err := s.Grants(ctx, "alice")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			p      Permission
			groups []string
			want   bool
		}{
			{Unattended, []string{"kiosks"}, true},
			{ViewScreen, []string{"labs", "x"}, true},
			{FullControl, []string{"labs"}, false},
			{ViewScreen, nil, false},
			{ManagePKI, []string{"labs"}, false},
		} {
			if got := g.OnDevice(tc.p, tc.groups); got != tc.want {
				t.Errorf("OnDevice(%s, %v) = %v", tc.p, tc.groups, got)
			}
		}
		if g.Allows(ManagePKI) || g.Allows(ReadDevices) {
			t.Error("scoped assignments granted a site-wide permission")
		}
		if all, groups := g.Scope(ViewScreen); all || !slices.Equal(groups, []string{"kiosks", "labs"}) {
			t.Errorf("Scope(ViewScreen) = %v %v", all, groups)
		}
		if err := s.DeleteRole(ctx, "Site PKI"); !errors.Is(err, ErrInUse) {
			t.Errorf("deleting an assigned role: %v", err)
		}
		if err := s.DeleteRole(ctx, HelpDeskOperator); !errors.Is(err, ErrBuiltIn) {
			t.Errorf("deleting a built-in role: %v", err)
		}
		if err := s.Unassign(ctx, "alice", "Site PKI", nil); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteRole(ctx, "site pki"); err != nil {
			t.Errorf("deleting an unassigned role: %v", err)
		}
		if err := s.Assign(ctx, "alice", ReadOnlyAnalyst, nil, "admin:root"); err != nil {
			t.Fatal(err)
		}
		if g, _ = s.Grants(ctx, "alice"); !g.Allows(ReadAudit) || !g.OnDevice(ReadDevices, nil) || g.OnDevice(ViewScreen, []string{"labs"}) {
			t.Errorf("after the changes: %+v", g)
		}
		if err := s.SetDisabled(ctx, "alice", true); err != nil {
			t.Fatal(err)
		}
		if g, _ = s.Grants(ctx, "alice"); g.Site != 0 || len(g.Groups) != 0 {
			t.Errorf("a disabled user has grants: %+v", g)
		}
		if err := s.SetDisabled(ctx, "alice", false); err != nil {
			t.Fatal(err)
		}
		if g, _ = s.Grants(ctx, "alice"); !g.Allows(ReadAudit) {
			t.Error("an enabled user lost the grants")
		}
		if _, err := s.Grants(ctx, "nobody"); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("grants of an unknown user: %v", err)
		}
		if err := s.SetDisabled(ctx, "nobody", true); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("disabling an unknown user: %v", err)
		}
		roles, err := s.Roles(ctx)
		if err != nil || len(roles) != len(BuiltInRoles) {
			t.Errorf("roles: %d, %v", len(roles), err)
		}
	})
}
