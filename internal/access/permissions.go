package access

import (
	"fmt"
	"slices"
	"strings"
)

// Permission is one thing a user may be allowed to do.
type Permission string

// The permissions of DESIGN.md §9.
const (
	ViewScreen            Permission = "ViewScreen"
	FullControl           Permission = "FullControl"
	Elevation             Permission = "Elevation"
	Unattended            Permission = "Unattended"
	OfferRemoteAssistance Permission = "OfferRemoteAssistance"
	ReadDevices           Permission = "ReadDevices"
	ManageDevices         Permission = "ManageDevices"
	ManagePolicy          Permission = "ManagePolicy"
	ManagePKI             Permission = "ManagePKI"
	ManageContent         Permission = "ManageContent"
	ManageAccess          Permission = "ManageAccess"
	ReadAudit             Permission = "ReadAudit"
)

// Permissions lists every permission, in the order they are shown.
var Permissions = []Permission{
	ViewScreen, FullControl, Elevation, Unattended, OfferRemoteAssistance,
	ReadDevices, ManageDevices, ManagePolicy, ManagePKI, ManageContent, ManageAccess, ReadAudit,
}

// implies holds the direct implications; Set.Has follows them transitively.
var implies = map[Permission]Permission{
	FullControl: ViewScreen,
	Elevation:   FullControl,
	Unattended:  Elevation,
}

// onDevice tells the permissions that act on a device and so follow an assignment's
// scopes; the others act on the whole site.
var onDevice = map[Permission]bool{
	ViewScreen: true, FullControl: true, Elevation: true, Unattended: true, OfferRemoteAssistance: true,
	ReadDevices: true, ManageDevices: true,
}

// OnDevice reports whether p acts on a device (and so is limited by scopes).
func (p Permission) OnDevice() bool { return onDevice[p] }

// ParsePermission reads a permission name; case does not matter.
func ParsePermission(s string) (Permission, error) {
	for _, p := range Permissions {
		if strings.EqualFold(s, string(p)) {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown permission %q (one of %s)", s, strings.Join(names(Permissions), ", "))
}

func names(ps []Permission) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

// Set is a set of permissions, read with their implications.
type Set uint32

func bit(p Permission) Set {
	i := slices.Index(Permissions, p)
	if i < 0 {
		return 0
	}
	return 1 << i
}

// SetOf returns the set holding ps and what they imply.
func SetOf(ps ...Permission) Set {
	var s Set
	for _, p := range ps {
		for ; p != ""; p = implies[p] {
			s |= bit(p)
		}
	}
	return s
}

// AllPermissions holds every permission.
var AllPermissions = SetOf(Permissions...)

// Has reports whether s grants p, directly or through an implication.
func (s Set) Has(p Permission) bool { b := bit(p); return b != 0 && s&b != 0 }

// List returns the permissions of s, implied ones included, in the order of Permissions.
func (s Set) List() []Permission {
	var out []Permission
	for _, p := range Permissions {
		if s.Has(p) {
			out = append(out, p)
		}
	}
	return out
}

// String lists the permissions of s separated by commas, as they are stored.
func (s Set) String() string { return strings.Join(names(s.List()), ",") }

// ParseSet reads permissions separated by commas (spaces allowed); an empty one or an
// unknown name is an error.
func ParseSet(s string) (Set, error) {
	var set Set
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return 0, fmt.Errorf("permissions %q: an empty name", s)
		}
		p, err := ParsePermission(f)
		if err != nil {
			return 0, err
		}
		set |= SetOf(p)
	}
	return set, nil
}
