package mp

import (
	"context"
	"database/sql"
	"fmt"
	"github.com/ibcm-project/ibcm/internal/access"
	"net/http"
	"net/url"
	"regexp"
	"slices"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// adminRoutes adds the admin API behind `ibcm device|group|policy`; an admin certificate
// is required.
//
//	GET    /v1/admin/devices
//	GET    /v1/admin/devices/{id}
//	POST   /v1/admin/devices/{id}/block
//	POST   /v1/admin/devices/{id}/unblock
//	POST   /v1/admin/devices/{id}/notify        {"type": "renew-cert"}
//	GET    /v1/admin/devices/{id}/messages      ?since=RFC3339&limit=N: wire.DeviceMessages
//	GET    /v1/admin/groups
//	POST   /v1/admin/groups                      {"name", "policy", "priority"}
//	POST   /v1/admin/groups/{name}/members       {"device_id"}
//	DELETE /v1/admin/groups/{name}/members/{device}
//	GET    /v1/admin/policies
//	GET    /v1/admin/policies/{name}
//	PUT    /v1/admin/policies/{name}             wire.Policy
func (m *MP) adminRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler) {
	admin := func(perm access.Permission, fn adminHandler) http.Handler { return m.admin(h, perm, fn) }
	onDevice := func(perm access.Permission, fn adminHandler) http.Handler { return m.onDevice(h, perm, fn) }
	inScope := func(perm access.Permission, fn adminHandler) http.Handler { return m.inAnyScope(h, perm, fn) }
	mux.Handle("GET /v1/admin/devices", inScope(access.ReadDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		ds, err := m.Devices(r.Context())
		if err != nil {
			return err
		}
		if ds, err = m.inScope(r.Context(), access.FromContext(r.Context()), access.ReadDevices, ds); err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, ds)
		return nil
	}))
	mux.Handle("GET /v1/admin/devices/{id}", onDevice(access.ReadDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		d, err := m.Device(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, d)
		return nil
	}))
	mux.Handle("GET /v1/admin/devices/{id}/messages", onDevice(access.ReadDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			return api.BadRequest("the query is not URL-encoded key=value pairs: %v", err)
		}
		since, limit, err := messagesQuery(q)
		if err != nil {
			return err
		}
		msgs, err := m.Messages(r.Context(), r.PathValue("id"), since, limit)
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, msgs)
		return nil
	}))
	mux.Handle("POST /v1/admin/devices/{id}/block", onDevice(access.ManageDevices, func(w http.ResponseWriter, r *http.Request, by string) error {
		res, err := m.Block(r.Context(), r.PathValue("id"), true)
		if err != nil {
			return err
		}
		m.log.Info().Str("device_id", res.Device.ID).Str("admin", by).Msg("device blocked")
		api.WriteJSON(w, http.StatusOK, res)
		return nil
	}))
	mux.Handle("POST /v1/admin/devices/{id}/unblock", onDevice(access.ManageDevices, func(w http.ResponseWriter, r *http.Request, by string) error {
		res, err := m.Block(r.Context(), r.PathValue("id"), false)
		if err != nil {
			return err
		}
		m.log.Info().Str("device_id", res.Device.ID).Str("admin", by).Msg("device unblocked")
		api.WriteJSON(w, http.StatusOK, res)
		return nil
	}))
	mux.Handle("POST /v1/admin/devices/{id}/notify", onDevice(access.ManageDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		var ev wire.Event
		if err := api.Decode(w, r, &ev); err != nil {
			return err
		}
		switch ev.Type {
		case wire.EventPolicyChanged, wire.EventRenewCert, wire.EventRedetectLocation:
		default:
			return api.BadRequest("type: policy-changed, renew-cert or re-detect-location")
		}
		id := r.PathValue("id")
		if _, err := m.Device(r.Context(), id); err != nil {
			return err
		}
		ev.Time = m.now().UTC()
		if err := m.Push(r.Context(), id, ev); err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusAccepted, ev)
		return nil
	}))
	mux.Handle("GET /v1/admin/groups", inScope(access.ReadDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		gs, err := m.Groups(r.Context())
		if err != nil {
			return err
		}
		if all, scope := access.FromContext(r.Context()).Scope(access.ReadDevices); !all {
			gs = slices.DeleteFunc(gs, func(g wire.Group) bool { return !slices.Contains(scope, g.Name) })
		}
		api.WriteJSON(w, http.StatusOK, gs)
		return nil
	}))
	mux.Handle("POST /v1/admin/groups", admin(access.ManageDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		var g wire.Group
		if err := api.Decode(w, r, &g); err != nil {
			return err
		}
		if err := m.CreateGroup(r.Context(), g); err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusCreated, g)
		return nil
	}))
	mux.Handle("POST /v1/admin/groups/{name}/members", admin(access.ManageDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		var req struct {
			DeviceID string `json:"device_id"`
		}
		if err := api.Decode(w, r, &req); err != nil {
			return err
		}
		if err := m.SetMember(r.Context(), r.PathValue("name"), req.DeviceID, true); err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, map[string]string{"group": r.PathValue("name"), "added": req.DeviceID})
		return nil
	}))
	mux.Handle("DELETE /v1/admin/groups/{name}/members/{device}", admin(access.ManageDevices, func(w http.ResponseWriter, r *http.Request, _ string) error {
		if err := m.SetMember(r.Context(), r.PathValue("name"), r.PathValue("device"), false); err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, map[string]string{"group": r.PathValue("name"), "removed": r.PathValue("device")})
		return nil
	}))
	mux.Handle("GET /v1/admin/policies", admin(access.ManagePolicy, func(w http.ResponseWriter, r *http.Request, _ string) error {
		ps, err := m.Policies(r.Context())
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, ps)
		return nil
	}))
	mux.Handle("GET /v1/admin/policies/{name}", admin(access.ManagePolicy, func(w http.ResponseWriter, r *http.Request, _ string) error {
		p, err := m.Policy(r.Context(), r.PathValue("name"))
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, p)
		return nil
	}))
	mux.Handle("PUT /v1/admin/policies/{name}", admin(access.ManagePolicy, func(w http.ResponseWriter, r *http.Request, by string) error {
		var p wire.Policy
		if err := api.Decode(w, r, &p); err != nil {
			return err
		}
		if p.Name == "" {
			p.Name = r.PathValue("name")
		}
		if p.Name != r.PathValue("name") {
			return api.BadRequest("name: %q does not match the URL's %q", p.Name, r.PathValue("name"))
		}
		stored, err := m.SetPolicy(r.Context(), p, by)
		if err != nil {
			return err
		}
		m.log.Info().Str("policy", stored.Name).Int("version", stored.Version).Str("admin", by).Msg("policy set")
		api.WriteJSON(w, http.StatusOK, stored)
		return nil
	}))
}

// Block marks a device blocked (or unblocked), and announces it so every MP closes the
// device's connections and refuses its handshakes; a block also revokes the device's
// re-enroll tokens not used yet. The answer lists the device's certificates, renewals
// included, which the caller revokes at the CA.
func (m *MP) Block(ctx context.Context, id string, block bool) (wire.BlockResult, error) {
	var serials []string
	err := m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var at any
		kind := kindUnblock
		if block {
			at, kind = m.now().Unix(), kindBlock
		}
		res, err := tx.Exec(`UPDATE devices SET blocked_at = ? WHERE id = ?`, at, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return api.Wrap(ErrNoDevice, http.StatusNotFound, "not_found", fmt.Sprintf("no device %q", id))
		}
		if block {
			// A re-enroll token not used yet does not outlive the block: the CA refuses it
			// while the device is blocked, and it would work again after an unblock, next
			// to the token the unblock prints.
			if _, err := tx.Exec(`UPDATE enrollment_tokens SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL`, at, id); err != nil {
				return fmt.Errorf("revoking the re-enroll tokens of device %s: %w", id, err)
			}
		}
		// Every certificate the device presented, every certificate a re-enroll token for it
		// made (the CA records one only while the device row is not blocked, under its
		// lock), and every renewal of one of them it has not presented yet (the CA's
		// certificates table records renewed_from).
		rows, err := tx.Query(`WITH RECURSIVE chain(serial) AS (
				SELECT serial FROM device_certificates WHERE device_id = ?
				UNION
				SELECT c.serial FROM certificates c JOIN enrollment_tokens t ON c.issued_by = 'token:' || t.id WHERE t.device_id = ?
				UNION
				SELECT c.serial FROM certificates c JOIN chain ON c.renewed_from = chain.serial
			) SELECT serial FROM chain ORDER BY serial`, id, id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				rows.Close()
				return err
			}
			serials = append(serials, wire.FormatDecimalSerial(s))
		}
		rows.Close()
		if err := rows.Err(); err != nil { // a list cut short would leave a certificate unrevoked
			return fmt.Errorf("listing the certificates of device %s: %w", id, err)
		}
		if block { // its sessions end, and their relay legs with them
			if _, err := m.endSessions(tx, wire.OutcomeFailed, "device_blocked", false, `device_id = ?`, id); err != nil {
				return fmt.Errorf("ending the sessions of device %s: %w", id, err)
			}
		}
		return m.hub.publish(tx, siteEvent{Kind: kind, Device: id})
	})
	if err != nil {
		return wire.BlockResult{}, err
	}
	d, err := m.Device(ctx, id)
	if err != nil {
		return wire.BlockResult{}, err
	}
	return wire.BlockResult{Device: d, Serials: serials}, nil
}

var groupNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// CreateGroup makes a device group, optionally with a policy and a priority (lower wins).
func (m *MP) CreateGroup(ctx context.Context, g wire.Group) error {
	if !groupNameRE.MatchString(g.Name) {
		return api.BadRequest("name: 1-64 lower-case letters, digits, '.', '_' or '-' (got %q)", g.Name)
	}
	if g.Policy != "" {
		if _, err := m.Policy(ctx, g.Policy); err != nil {
			return err
		}
	}
	if g.Priority == 0 {
		g.Priority = 100
	}
	// A new group has no members yet: no device's policy changes.
	_, err := m.db.Exec(ctx, `INSERT INTO device_groups (name, policy, priority, created_at) VALUES (?, ?, ?, ?)`, g.Name, g.Policy, g.Priority, m.now().Unix())
	if sitedb.IsUniqueViolation(err) {
		return api.Errorf(http.StatusConflict, "exists", "group %q exists", g.Name)
	}
	return err
}

// SetMember adds a device to a group or removes it.
func (m *MP) SetMember(ctx context.Context, group, device string, member bool) error {
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM device_groups WHERE name = ?`, group).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return api.Errorf(http.StatusNotFound, "not_found", "no group %q", group)
		}
		if member {
			if err := tx.QueryRow(`SELECT COUNT(*) FROM devices WHERE id = ?`, device).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return api.Errorf(http.StatusNotFound, "not_found", "no device %q", device)
			}
			if _, err := tx.Exec(`INSERT INTO group_members (group_name, device_id) VALUES (?, ?) ON CONFLICT DO NOTHING`, group, device); err != nil {
				return err
			}
		} else {
			res, err := tx.Exec(`DELETE FROM group_members WHERE group_name = ? AND device_id = ?`, group, device)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return api.Errorf(http.StatusNotFound, "not_found", "device %q is not in group %q", device, group)
			}
		}
		return m.hub.publish(tx, siteEvent{Kind: kindGroups, Device: device})
	})
}

// Groups lists every group with its members.
func (m *MP) Groups(ctx context.Context) ([]wire.Group, error) {
	rows, err := m.db.Query(ctx, `SELECT g.name, g.policy, g.priority, gm.device_id FROM device_groups g
		LEFT JOIN group_members gm ON gm.group_name = g.name ORDER BY g.priority, g.name, gm.device_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.Group{}
	for rows.Next() {
		var g wire.Group
		var dev sql.NullString
		if err := rows.Scan(&g.Name, &g.Policy, &g.Priority, &dev); err != nil {
			return nil, err
		}
		if n := len(out); n == 0 || out[n-1].Name != g.Name {
			out = append(out, g)
		}
		if dev.Valid {
			out[len(out)-1].Devices = append(out[len(out)-1].Devices, dev.String)
		}
	}
	return out, rows.Err()
}
