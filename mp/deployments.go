package mp

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Deployments: a package version for the members of a device group. They reach the agent
// in its policy (policy.go adds them), and its status messages of component "deployment"
// say how far each device got (recordDeployState).
//
//	POST   /v1/admin/deployments        DeploymentCreate → DeploymentInfo (201)
//	GET    /v1/admin/deployments        → []DeploymentInfo (those of the groups in the user's scope)
//	GET    /v1/admin/deployments/{id}   → DeploymentInfo with Devices
//	DELETE /v1/admin/deployments/{id}   204
//
// They need ManageContent over the whole site or over the deployment's group; a
// deployment of a group out of the user's scope is answered as if it did not exist (404).

var deploymentIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// contentScope is where g grants ManageContent: everywhere, or over these groups.
func contentScope(g access.Grants) (all bool, groups []string) {
	if g.Allows(access.ManageContent) {
		return true, nil
	}
	for grp, s := range g.Groups {
		if s.Has(access.ManageContent) {
			groups = append(groups, grp)
		}
	}
	slices.Sort(groups)
	return false, groups
}

func groupInScope(g access.Grants, group string) bool {
	all, groups := contentScope(g)
	return all || slices.Contains(groups, group)
}

func errNoDeployment(id string) error {
	return api.Errorf(http.StatusNotFound, "not_found", "no deployment %q", truncate(id))
}

func (m *MP) deploymentRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler) {
	deployer := func(fn adminHandler) http.Handler {
		return m.guard(h, func(_ *http.Request, name string, g access.Grants) error {
			if all, groups := contentScope(g); !all && len(groups) == 0 {
				return forbidden(name, access.ManageContent)
			}
			return nil
		}, fn)
	}
	mux.Handle("POST /v1/admin/deployments", deployer(m.handleDeploymentCreate))
	mux.Handle("GET /v1/admin/deployments", deployer(func(w http.ResponseWriter, r *http.Request, _ string) error {
		ds, err := m.deployments(r.Context(), "")
		if err != nil {
			return err
		}
		g := access.FromContext(r.Context())
		ds = slices.DeleteFunc(ds, func(d wire.DeploymentInfo) bool { return !groupInScope(g, d.Group) })
		for i := range ds {
			if ds[i].Counts, err = m.deploymentCounts(r.Context(), ds[i].ID, ds[i].Group); err != nil {
				return err
			}
		}
		api.WriteJSON(w, http.StatusOK, ds)
		return nil
	}))
	mux.Handle("GET /v1/admin/deployments/{id}", deployer(func(w http.ResponseWriter, r *http.Request, _ string) error {
		d, err := m.deploymentInScope(r)
		if err != nil {
			return err
		}
		if d.Devices, err = m.deploymentDevices(r.Context(), d.ID, d.Group); err != nil {
			return err
		}
		d.Counts = map[string]int{}
		for _, dev := range d.Devices {
			d.Counts[dev.State]++
		}
		api.WriteJSON(w, http.StatusOK, d)
		return nil
	}))
	mux.Handle("DELETE /v1/admin/deployments/{id}", deployer(func(w http.ResponseWriter, r *http.Request, by string) error {
		d, err := m.deploymentInScope(r)
		if err != nil {
			return err
		}
		err = m.db.Tx(r.Context(), func(tx *sitedb.Tx) error {
			res, err := tx.Exec(`DELETE FROM deployments WHERE id = ?`, d.ID)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return errNoDeployment(d.ID)
			}
			if _, err := tx.Exec(`DELETE FROM deployment_devices WHERE deployment_id = ?`, d.ID); err != nil {
				return err
			}
			return m.hub.publish(tx, siteEvent{Kind: kindDeploy, Policy: d.Group})
		})
		if err != nil {
			return err
		}
		m.log.Info().Str("deployment_id", d.ID).Str("group", d.Group).Str("admin", by).Msg("deployment removed")
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
}

// deploymentInScope reads the deployment {id}, or 404 when there is none or its group is
// out of the user's scope.
func (m *MP) deploymentInScope(r *http.Request) (wire.DeploymentInfo, error) {
	id := r.PathValue("id")
	if !deploymentIDRE.MatchString(id) {
		return wire.DeploymentInfo{}, errNoDeployment(id)
	}
	ds, err := m.deployments(r.Context(), id)
	if err != nil {
		return wire.DeploymentInfo{}, err
	}
	if len(ds) == 0 || !groupInScope(access.FromContext(r.Context()), ds[0].Group) {
		return wire.DeploymentInfo{}, errNoDeployment(id)
	}
	return ds[0], nil
}

func (m *MP) handleDeploymentCreate(w http.ResponseWriter, r *http.Request, by string) error {
	var req wire.DeploymentCreate
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	switch {
	case !manifest.ValidName(req.Package):
		return api.BadRequest("package %q: lowercase letters, digits, '.', '_', '-', up to 64", truncate(req.Package))
	case !manifest.ValidVersion(req.Version):
		return api.BadRequest("version %q: letters, digits, '.', '_', '+', '~', '-', up to 64", truncate(req.Version))
	case req.Group == "" || len(req.Group) > 128:
		return api.BadRequest("group: 1 to 128 characters")
	}
	noGroup := api.Errorf(http.StatusNotFound, "not_found", "no group %q", truncate(req.Group))
	if !groupInScope(access.FromContext(r.Context()), req.Group) {
		return noGroup // as for a group that does not exist
	}
	d := wire.DeploymentInfo{ID: randomID(), Package: req.Package, Version: req.Version, Group: req.Group, Install: req.Install,
		Created: m.now().UTC().Truncate(time.Second), CreatedBy: by}
	err := m.db.Tx(r.Context(), func(tx *sitedb.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM device_groups WHERE name = ?`, req.Group).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return noGroup
		}
		// The update locks the package version's row (PostgreSQL) against a removal that
		// would not see this deployment yet (removeContent deletes the row first).
		if _, err := tx.Exec(`UPDATE content_versions SET size = size WHERE name = ? AND version = ?`, req.Package, req.Version); err != nil {
			return err
		}
		err := tx.QueryRow(`SELECT manifest_sha256 FROM content_versions WHERE name = ? AND version = ?`, req.Package, req.Version).Scan(&d.ManifestSHA256)
		if errors.Is(err, sql.ErrNoRows) {
			return errNoContent(req.Package, req.Version)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO deployments (id, name, version, manifest_sha256, group_name, install, created, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			d.ID, d.Package, d.Version, d.ManifestSHA256, d.Group, boolInt(d.Install), d.Created.Unix(), by); err != nil {
			return err
		}
		return m.hub.publish(tx, siteEvent{Kind: kindDeploy, Policy: d.Group})
	})
	if err != nil {
		return err
	}
	if d.Counts, err = m.deploymentCounts(r.Context(), d.ID, d.Group); err != nil {
		return err
	}
	m.log.Info().Str("deployment_id", d.ID).Str("package", d.Package).Str("version", d.Version).Str("group", d.Group).
		Bool("install", d.Install).Str("admin", by).Msg("deployment created")
	api.WriteJSON(w, http.StatusCreated, d)
	return nil
}

// deployments reads every deployment (or the one of id), oldest first.
func (m *MP) deployments(ctx context.Context, id string) ([]wire.DeploymentInfo, error) {
	q := `SELECT id, name, version, manifest_sha256, group_name, install, created, created_by FROM deployments`
	var args []any
	if id != "" {
		q += ` WHERE id = ?`
		args = append(args, id)
	}
	rows, err := m.db.Query(ctx, q+` ORDER BY created, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.DeploymentInfo{}
	for rows.Next() {
		var d wire.DeploymentInfo
		var install int
		var created int64
		if err := rows.Scan(&d.ID, &d.Package, &d.Version, &d.ManifestSHA256, &d.Group, &install, &created, &d.CreatedBy); err != nil {
			return nil, err
		}
		d.Install, d.Created = install != 0, time.Unix(created, 0).UTC()
		out = append(out, d)
	}
	return out, rows.Err()
}

// deploymentCounts counts the members of the group by their latest state of the
// deployment (pending when they reported none).
func (m *MP) deploymentCounts(ctx context.Context, id, group string) (map[string]int, error) {
	rows, err := m.db.Query(ctx, `SELECT dd.state, COUNT(*) FROM group_members gm
		LEFT JOIN deployment_devices dd ON dd.deployment_id = ? AND dd.device_id = gm.device_id
		WHERE gm.group_name = ? GROUP BY dd.state`, id, group)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state sql.NullString
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		s := wire.DeployPending
		if state.Valid {
			s = state.String
		}
		out[s] += n
	}
	return out, rows.Err()
}

// deploymentDevices is every member of the group with its latest state of the deployment.
func (m *MP) deploymentDevices(ctx context.Context, id, group string) ([]wire.DeploymentDevice, error) {
	rows, err := m.db.Query(ctx, `SELECT gm.device_id, COALESCE(d.name, ''), dd.state, dd.percent, dd.exit_code, dd.dp, dd.error, dd.updated
		FROM group_members gm
		LEFT JOIN devices d ON d.id = gm.device_id
		LEFT JOIN deployment_devices dd ON dd.deployment_id = ? AND dd.device_id = gm.device_id
		WHERE gm.group_name = ? ORDER BY gm.device_id`, id, group)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.DeploymentDevice{}
	for rows.Next() {
		var dd wire.DeploymentDevice
		var state, dp, errText sql.NullString
		var percent, exit, updated sql.NullInt64
		if err := rows.Scan(&dd.DeviceID, &dd.Name, &state, &percent, &exit, &dp, &errText, &updated); err != nil {
			return nil, err
		}
		dd.State = wire.DeployPending
		if state.Valid {
			dd.State, dd.Percent, dd.DP, dd.Error = state.String, int(percent.Int64), dp.String, errText.String
			dd.Updated = time.Unix(updated.Int64, 0).UTC()
			if exit.Valid {
				code := int(exit.Int64)
				dd.ExitCode = &code
			}
		}
		out = append(out, dd)
	}
	return out, rows.Err()
}

// deploymentsChanged runs on every MP when the deployments of a group changed: the
// policies it resolved forget their deployments, and the group's members connected here
// are told to fetch their policy again.
func (m *MP) deploymentsChanged(ctx context.Context, group string) {
	m.policies.clearDeployments()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := m.db.Query(ctx, `SELECT device_id FROM group_members WHERE group_name = ?`, group)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn().Err(err).Str("group", group).Msg("reading the members of a group whose deployments changed; they act at their next policy fetch")
		}
		return
	}
	var members []string
	for rows.Next() {
		var id string
		if rows.Scan(&id) == nil {
			members = append(members, id)
		}
	}
	rows.Close()
	ev := wire.Event{Type: wire.EventPolicyChanged, Time: m.now().UTC()}
	for _, id := range members {
		m.hub.deliver(id, ev)
	}
}

// deviceDeployments is the deployments of the device's groups, by id, each once.
func (m *MP) deviceDeployments(ctx context.Context, device string) ([]wire.Deployment, error) {
	c := m.policies
	c.mu.RLock()
	ds, ok := c.deploys[device]
	gen := c.gen
	c.mu.RUnlock()
	if ok {
		return ds, nil
	}
	rows, err := m.db.Query(ctx, `SELECT DISTINCT d.id, d.name, d.version, d.manifest_sha256, d.install FROM deployments d
		JOIN group_members gm ON gm.group_name = d.group_name WHERE gm.device_id = ? ORDER BY d.id`, device)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var d wire.Deployment
		var install int
		if err := rows.Scan(&d.ID, &d.Package, &d.Version, &d.ManifestSHA256, &install); err != nil {
			return nil, err
		}
		d.Install = install != 0
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.gen == gen {
		c.deploys[device] = ds
	}
	c.mu.Unlock()
	return ds, nil
}

// deployState is a status message's report about a deployment.
type deployState struct {
	id, state, dp, errText string
	percent                int
	exitCode               *int
	at                     time.Time
}

// parseDeployState reads the fields of a status message of component "deployment".
func parseDeployState(msg wire.StatusMessage) (deployState, error) {
	f := msg.Fields
	s := deployState{id: f[wire.FieldDeployment], state: f[wire.FieldDeployState], dp: f[wire.FieldDP], errText: f[wire.FieldError], at: msg.Time}
	for k := range f {
		switch k {
		case wire.FieldDeployment, wire.FieldDeployState, wire.FieldPercent, wire.FieldExitCode, wire.FieldDP, wire.FieldError:
		default:
			return s, fmt.Errorf("fields: %q is not a field of a deployment report", truncate(k))
		}
	}
	if s.id == "" || len(s.id) > 64 {
		return s, fmt.Errorf("fields.%s: the deployment id is required (at most 64 characters)", wire.FieldDeployment)
	}
	switch s.state {
	case wire.DeployPending, wire.DeployDownloading, wire.DeployDownloaded, wire.DeployInstalling, wire.DeployInstalled, wire.DeployFailed:
	default:
		return s, fmt.Errorf("fields.%s %q: pending, downloading, downloaded, installing, installed or failed", wire.FieldDeployState, truncate(s.state))
	}
	if v, ok := f[wire.FieldPercent]; ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100 {
			return s, fmt.Errorf("fields.%s %q: a whole number from 0 to 100", wire.FieldPercent, truncate(v))
		}
		s.percent = n
	}
	if v, ok := f[wire.FieldExitCode]; ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < -1 || n > 255 {
			return s, fmt.Errorf("fields.%s %q: an exit code from 0 to 255 (-1: killed)", wire.FieldExitCode, truncate(v))
		}
		s.exitCode = &n
	}
	if len(s.dp) > 512 || strings.ContainsRune(s.dp, 0) {
		return s, fmt.Errorf("fields.%s: at most 512 characters", wire.FieldDP)
	}
	if len(s.errText) > 2048 || strings.ContainsRune(s.errText, 0) {
		return s, fmt.Errorf("fields.%s: at most 2048 bytes, no NUL", wire.FieldError)
	}
	return s, nil
}

// recordDeployState keeps a device's latest state of a deployment (by message time); a
// report about a deployment that does not exist (removed meanwhile) or is not of one of
// the device's groups (it left the group, or the report is made up) is ignored.
func (m *MP) recordDeployState(tx *sitedb.Tx, device string, s deployState) error {
	var n int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM deployments d JOIN group_members gm ON gm.group_name = d.group_name
		WHERE d.id = ? AND gm.device_id = ?`, s.id, device).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	var exit any
	if s.exitCode != nil {
		exit = *s.exitCode
	}
	_, err := tx.Exec(`INSERT INTO deployment_devices (deployment_id, device_id, state, percent, exit_code, dp, error, msg_ns, updated)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (deployment_id, device_id) DO UPDATE SET state = excluded.state, percent = excluded.percent,
			exit_code = excluded.exit_code, dp = excluded.dp, error = excluded.error, msg_ns = excluded.msg_ns, updated = excluded.updated
		WHERE deployment_devices.msg_ns <= excluded.msg_ns`,
		s.id, device, s.state, s.percent, exit, s.dp, s.errText, s.at.UnixNano(), s.at.Unix())
	return err
}
