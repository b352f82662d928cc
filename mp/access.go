package mp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// adminHandler is the one place the MP's admin routes check who is asking: a user's
// certificate (never a device's or a server's), and the user's grants read afresh on each
// request, so a disabled user or a removed assignment takes effect at once.
type adminHandler func(w http.ResponseWriter, r *http.Request, name string) error

// guard runs fn for a user whose grants pass check.
func (m *MP) guard(h func(api.HandlerFunc) http.Handler, check func(r *http.Request, name string, g access.Grants) error, fn adminHandler) http.Handler {
	return h(func(w http.ResponseWriter, r *http.Request) error {
		name, g, err := m.grants(r)
		if err != nil {
			return err
		}
		if err := check(r, name, g); err != nil {
			return err
		}
		return fn(w, r.WithContext(access.NewContext(r.Context(), g)), name)
	})
}

// admin wraps a route that needs perm over the whole site.
func (m *MP) admin(h func(api.HandlerFunc) http.Handler, perm access.Permission, fn adminHandler) http.Handler {
	return m.guard(h, func(_ *http.Request, name string, g access.Grants) error {
		if !g.Allows(perm) {
			return forbidden(name, perm)
		}
		return nil
	}, fn)
}

// inAnyScope wraps a list route: the user needs perm on some devices, and the route keeps
// its answer to those (inScope).
func (m *MP) inAnyScope(h func(api.HandlerFunc) http.Handler, perm access.Permission, fn adminHandler) http.Handler {
	return m.guard(h, func(_ *http.Request, name string, g access.Grants) error { return anyScope(name, g, perm) }, fn)
}

// onDevice wraps a route about the device {id} that needs perm on that device: through an
// assignment over the whole site or over one of the device's groups. A user who has perm
// only elsewhere is told the device does not exist, as for an unknown one.
func (m *MP) onDevice(h func(api.HandlerFunc) http.Handler, perm access.Permission, fn adminHandler) http.Handler {
	return m.guard(h, func(r *http.Request, name string, g access.Grants) error {
		if err := anyScope(name, g, perm); err != nil {
			return err
		}
		id := r.PathValue("id")
		groups, err := m.groupsOf(r.Context(), id)
		if err != nil {
			return err
		}
		if !g.OnDevice(perm, groups) {
			return api.Wrap(ErrNoDevice, http.StatusNotFound, "not_found", fmt.Sprintf("no device %q", id))
		}
		return nil
	}, fn)
}

// anyScope refuses a user who has perm on no device at all.
func anyScope(name string, g access.Grants, perm access.Permission) error {
	if all, groups := g.Scope(perm); !all && len(groups) == 0 {
		return forbidden(name, perm)
	}
	return nil
}

func (m *MP) grants(r *http.Request) (string, access.Grants, error) {
	p := peerOf(r)
	if p.id.Kind != trust.KindUser {
		return "", access.Grants{}, api.Errorf(http.StatusForbidden, "not_admin", "the admin API needs an admin certificate")
	}
	g, err := m.access.Grants(r.Context(), p.id.ID)
	if err != nil && !errors.Is(err, access.ErrUnknownUser) {
		return "", access.Grants{}, err
	}
	return p.id.ID, g, nil
}

// forbidden is the answer to a user who lacks perm.
func forbidden(user string, perm access.Permission) error {
	return api.Errorf(http.StatusForbidden, "forbidden", "user %q does not have the %s permission", user, perm)
}

// groupsOf returns the groups of a device.
func (m *MP) groupsOf(ctx context.Context, id string) ([]string, error) {
	rows, err := m.db.Query(ctx, `SELECT group_name FROM group_members WHERE device_id = ? ORDER BY group_name`, id)
	if err != nil {
		return nil, fmt.Errorf("reading the device's groups: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, fmt.Errorf("reading the device's groups: %w", err)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// inScope keeps the devices on which g grants perm.
func (m *MP) inScope(ctx context.Context, g access.Grants, perm access.Permission, ds []wire.Device) ([]wire.Device, error) {
	all, groups := g.Scope(perm)
	if all {
		return ds, nil
	}
	out := []wire.Device{}
	if len(groups) == 0 {
		return out, nil
	}
	args := make([]any, len(groups))
	for i, grp := range groups {
		args[i] = grp
	}
	rows, err := m.db.Query(ctx, `SELECT DISTINCT device_id FROM group_members WHERE group_name IN (?`+strings.Repeat(", ?", len(groups)-1)+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading the groups' devices: %w", err)
	}
	defer rows.Close()
	in := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("reading the groups' devices: %w", err)
		}
		in[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the groups' devices: %w", err)
	}
	for _, d := range ds {
		if in[d.ID] {
			out = append(out, d)
		}
	}
	return out, nil
}
