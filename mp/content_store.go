package mp

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The site database's side of content, DPs and deployments (migration 007): what the
// routes of content.go, dps.go and deployments.go read and write.

// allDPs is the dp_id of a distribution to every DP, those registered later included.
const allDPs = "*"

// dpRow is a registered DP.
type dpRow struct {
	wire.DPInfo
	pubkeyHash string
}

// dpLiveFor is how long after its last request (or the last ping of its open feed) a DP
// counts as live for GET /v1/locate and `ibcm dp list`: three feed pings. A DP whose feed
// is open is seen every dpPingEvery; one without, each time it registers, fetches its
// assignments or reports its state.
const (
	dpPingEvery = 15 * time.Second
	dpLiveFor   = 3 * dpPingEvery
)

func (m *MP) dpLiveSince() int64 { return m.now().Add(-dpLiveFor).Unix() }

const dpColumns = `id, mode, intranet_url, internet_url, priority, origin, pubkey_hash, version, last_seen`

func (m *MP) scanDP(row interface{ Scan(...any) error }) (dpRow, error) {
	var d dpRow
	var origin int
	var seen int64
	var version string
	if err := row.Scan(&d.ID, &d.Mode, &d.IntranetURL, &d.InternetURL, &d.Priority, &origin, &d.pubkeyHash, &version, &seen); err != nil {
		return dpRow{}, err
	}
	d.Origin = origin != 0
	d.LastSeen = time.Unix(seen, 0).UTC()
	d.Online = seen >= m.dpLiveSince()
	return d, nil
}

// dp reads one registered DP; sql.ErrNoRows when it never registered.
func (m *MP) dp(ctx context.Context, id string) (dpRow, error) {
	return m.scanDP(m.db.QueryRow(ctx, `SELECT `+dpColumns+` FROM dps WHERE id = ?`, id))
}

// listDPs reads every registered DP, by id; with their package states when withPackages.
func (m *MP) listDPs(ctx context.Context, withPackages bool) ([]wire.DPInfo, error) {
	rows, err := m.db.Query(ctx, `SELECT `+dpColumns+` FROM dps ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.DPInfo{}
	for rows.Next() {
		d, err := m.scanDP(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d.DPInfo)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if !withPackages {
		return out, nil
	}
	for i := range out {
		if out[i].Packages, err = m.dpPackageStates(ctx, out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dpPackageStates is what DP d should hold, each with its last reported state (pending
// when none).
func (m *MP) dpPackageStates(ctx context.Context, d wire.DPInfo) ([]wire.DPPackageState, error) {
	q := `SELECT cv.name, cv.version, p.state, p.percent, p.error, p.updated FROM content_versions cv
		LEFT JOIN dp_packages p ON p.dp_id = ? AND p.name = cv.name AND p.version = cv.version`
	args := []any{d.ID}
	if !d.Origin {
		q += ` WHERE EXISTS (SELECT 1 FROM distributions x WHERE x.name = cv.name AND x.version = cv.version AND x.dp_id IN (?, ?))`
		args = append(args, d.ID, allDPs)
	}
	rows, err := m.db.Query(ctx, q+` ORDER BY cv.name, cv.version`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.DPPackageState{}
	for rows.Next() {
		s, err := scanPackageState(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func scanPackageState(row interface{ Scan(...any) error }) (wire.DPPackageState, error) {
	var s wire.DPPackageState
	var state, errText sql.NullString
	var percent, updated sql.NullInt64
	if err := row.Scan(&s.Name, &s.Version, &state, &percent, &errText, &updated); err != nil {
		return s, err
	}
	s.State = wire.DPPending
	if state.Valid {
		s.State, s.Percent, s.Error = state.String, int(percent.Int64), errText.String
		s.Updated = time.Unix(updated.Int64, 0).UTC()
	}
	return s, nil
}

// touchDP records that DP id was just seen.
func (m *MP) touchDP(ctx context.Context, id string) error {
	_, err := m.db.Exec(ctx, `UPDATE dps SET last_seen = ? WHERE id = ?`, m.now().Unix(), id)
	return err
}

// registerDP stores a registration; changed says whether anything other DPs see (URLs,
// mode, priority, origin) is new.
func (m *MP) registerDP(ctx context.Context, reg wire.DPRegistration, pubkeyHash string) (changed bool, err error) {
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var mode, in, out string
		var prio, origin int
		err := tx.QueryRow(`SELECT mode, intranet_url, internet_url, priority, origin FROM dps WHERE id = ?`, reg.ID).Scan(&mode, &in, &out, &prio, &origin)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			changed = true
		case err != nil:
			return err
		default:
			changed = mode != reg.Mode || in != reg.IntranetURL || out != reg.InternetURL || prio != reg.Priority || (origin != 0) != reg.Origin
		}
		now := m.now().Unix()
		if _, err := tx.Exec(`INSERT INTO dps (id, mode, intranet_url, internet_url, priority, origin, pubkey_hash, version, registered_at, last_seen)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET mode = excluded.mode, intranet_url = excluded.intranet_url, internet_url = excluded.internet_url,
				priority = excluded.priority, origin = excluded.origin, pubkey_hash = excluded.pubkey_hash, version = excluded.version,
				registered_at = excluded.registered_at, last_seen = excluded.last_seen`,
			reg.ID, reg.Mode, reg.IntranetURL, reg.InternetURL, reg.Priority, boolInt(reg.Origin), pubkeyHash, reg.Version, now, now); err != nil {
			return err
		}
		if changed {
			return m.hub.publish(tx, siteEvent{Kind: kindContent}) // every DP's list of DPs changed
		}
		return nil
	})
	return changed, err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// assignments is what DP d holds: every package version when it is an origin, else those
// distributed to it or to every DP.
func (m *MP) assignments(ctx context.Context, d dpRow) (wire.DPAssignments, error) {
	q := `SELECT cv.name, cv.version, cv.manifest_sha256, cv.signed FROM content_versions cv`
	var args []any
	if !d.Origin {
		q += ` WHERE EXISTS (SELECT 1 FROM distributions x WHERE x.name = cv.name AND x.version = cv.version AND x.dp_id IN (?, ?))`
		args = append(args, d.ID, allDPs)
	}
	rows, err := m.db.Query(ctx, q+` ORDER BY cv.name, cv.version`, args...)
	if err != nil {
		return wire.DPAssignments{}, err
	}
	defer rows.Close()
	out := wire.DPAssignments{Packages: []wire.DPPackage{}}
	for rows.Next() {
		var p wire.DPPackage
		var signed []byte
		if err := rows.Scan(&p.Name, &p.Version, &p.ManifestSHA256, &signed); err != nil {
			return wire.DPAssignments{}, err
		}
		p.Manifest = json.RawMessage(signed)
		out.Packages = append(out.Packages, p)
	}
	if err := rows.Err(); err != nil {
		return wire.DPAssignments{}, err
	}
	rows.Close()
	if out.DPs, err = m.listDPs(ctx, false); err != nil {
		return wire.DPAssignments{}, err
	}
	return out, nil
}

// storeDPStates stores the states a DP reported, each only when newer than the stored
// one and only for package versions that exist.
func (m *MP) storeDPStates(ctx context.Context, id string, ps []wire.DPPackageState) error {
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		for _, p := range ps {
			var n int
			if err := tx.QueryRow(`SELECT COUNT(*) FROM content_versions WHERE name = ? AND version = ?`, p.Name, p.Version).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				continue // removed meanwhile
			}
			if _, err := tx.Exec(`INSERT INTO dp_packages (dp_id, name, version, state, percent, error, updated) VALUES (?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (dp_id, name, version) DO UPDATE SET state = excluded.state, percent = excluded.percent,
					error = excluded.error, updated = excluded.updated WHERE dp_packages.updated <= excluded.updated`,
				id, p.Name, p.Version, p.State, p.Percent, p.Error, p.Updated.Unix()); err != nil {
				return err
			}
		}
		_, err := tx.Exec(`UPDATE dps SET last_seen = ? WHERE id = ?`, m.now().Unix(), id)
		return err
	})
}

// errNoContent answers for a package version the site does not have.
func errNoContent(name, version string) error {
	return api.Errorf(http.StatusNotFound, "not_found", "no package %s version %s", name, version)
}

// addContent stores a verified package version. It returns created = false when the same
// signed manifest was already there (nothing changes), and 409 when another one is.
func (m *MP) addContent(ctx context.Context, man *wire.Manifest, signed []byte, pin, by string) (created bool, err error) {
	var size int64
	for _, f := range man.Files {
		size += f.Size
	}
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var have string
		err := tx.QueryRow(`SELECT manifest_sha256 FROM content_versions WHERE name = ? AND version = ?`, man.Name, man.Version).Scan(&have)
		switch {
		case err == nil && have == pin:
			return nil
		case err == nil:
			return api.Errorf(http.StatusConflict, "content_exists",
				"package %s version %s exists with another manifest (sha256 %s): give the new one another version", man.Name, man.Version, have)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if _, err := tx.Exec(`INSERT INTO content_versions (name, version, manifest_sha256, signed, size, created, added_by) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			man.Name, man.Version, pin, signed, size, m.now().Unix(), by); err != nil {
			if sitedb.IsUniqueViolation(err) {
				return api.Errorf(http.StatusConflict, "content_exists", "package %s version %s was added meanwhile", man.Name, man.Version)
			}
			return err
		}
		for _, f := range man.Files {
			if _, err := tx.Exec(`INSERT INTO content_files (name, version, sha256, size) VALUES (?, ?, ?, ?)
				ON CONFLICT (name, version, sha256) DO NOTHING`, man.Name, man.Version, f.SHA256, f.Size); err != nil {
				return err
			}
		}
		created = true
		return m.hub.publish(tx, siteEvent{Kind: kindContent}) // the origin DPs hold every version
	})
	return created, err
}

// contentRow is a stored package version.
type contentRow struct {
	wire.ContentVersion
	signed []byte
}

const contentColumns = `cv.name, cv.version, cv.manifest_sha256, cv.signed, cv.size, cv.created, cv.added_by,
	(SELECT COUNT(*) FROM deployments d WHERE d.name = cv.name AND d.version = cv.version)`

func scanContent(row interface{ Scan(...any) error }) (contentRow, error) {
	var c contentRow
	var created int64
	if err := row.Scan(&c.Name, &c.Version, &c.ManifestSHA256, &c.signed, &c.Size, &created, &c.AddedBy, &c.Deployments); err != nil {
		return contentRow{}, err
	}
	c.Created = time.Unix(created, 0).UTC()
	return c, nil
}

// listContent reads every package version, by name and version.
func (m *MP) listContent(ctx context.Context) ([]wire.ContentVersion, error) {
	rows, err := m.db.Query(ctx, `SELECT `+contentColumns+` FROM content_versions cv ORDER BY cv.name, cv.version`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.ContentVersion{}
	for rows.Next() {
		c, err := scanContent(rows)
		if err != nil {
			return nil, err
		}
		// The list says whether each version installs (not its files).
		if sm, err := manifest.ParseSigned(c.signed); err == nil {
			if man, err := manifest.Decode(sm.Manifest); err == nil {
				c.Install = man.Install
			}
		}
		out = append(out, c.ContentVersion)
	}
	return out, rows.Err()
}

// content reads one package version with its files, install spec and per-DP state.
func (m *MP) content(ctx context.Context, name, version string) (wire.ContentVersion, error) {
	c, err := scanContent(m.db.QueryRow(ctx, `SELECT `+contentColumns+` FROM content_versions cv WHERE cv.name = ? AND cv.version = ?`, name, version))
	if errors.Is(err, sql.ErrNoRows) {
		return wire.ContentVersion{}, errNoContent(name, version)
	}
	if err != nil {
		return wire.ContentVersion{}, err
	}
	sm, err := manifest.ParseSigned(c.signed)
	if err != nil {
		return wire.ContentVersion{}, fmt.Errorf("stored manifest of %s %s: %w", name, version, err)
	}
	man, err := manifest.Decode(sm.Manifest)
	if err != nil {
		return wire.ContentVersion{}, fmt.Errorf("stored manifest of %s %s: %w", name, version, err)
	}
	c.Files, c.Install = man.Files, man.Install
	dps, err := m.listDPs(ctx, true)
	if err != nil {
		return wire.ContentVersion{}, err
	}
	c.DPs = []wire.DPPackageState{}
	for _, d := range dps {
		i := slices.IndexFunc(d.Packages, func(p wire.DPPackageState) bool { return p.Name == name && p.Version == version })
		if i < 0 {
			continue // not given to this DP
		}
		s := d.Packages[i]
		s.Name = d.ID
		c.DPs = append(c.DPs, s)
	}
	return c.ContentVersion, nil
}

// removeContent deletes a package version no deployment uses.
func (m *MP) removeContent(ctx context.Context, name, version string) error {
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		// Deleted first: a deployment made meanwhile waits for this row's lock (PostgreSQL)
		// and is seen below, or finds the version gone.
		res, err := tx.Exec(`DELETE FROM content_versions WHERE name = ? AND version = ?`, name, version)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNoContent(name, version)
		}
		var ids []string
		rows, err := tx.Query(`SELECT id FROM deployments WHERE name = ? AND version = ? ORDER BY id`, name, version)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if len(ids) > 0 {
			return api.Errorf(http.StatusConflict, "deployment_uses_content", "package %s version %s is used by deployment(s) %s: remove them first",
				name, version, strings.Join(ids, ", "))
		}
		for _, q := range []string{`DELETE FROM content_files WHERE name = ? AND version = ?`,
			`DELETE FROM distributions WHERE name = ? AND version = ?`, `DELETE FROM dp_packages WHERE name = ? AND version = ?`} {
			if _, err := tx.Exec(q, name, version); err != nil {
				return err
			}
		}
		return m.hub.publish(tx, siteEvent{Kind: kindContent})
	})
}

// distribute gives a package version to the DPs named (every DP when none).
func (m *MP) distribute(ctx context.Context, name, version string, dps []string) error {
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM content_versions WHERE name = ? AND version = ?`, name, version).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return errNoContent(name, version)
		}
		targets := dps
		if len(targets) == 0 {
			targets = []string{allDPs}
		}
		for _, id := range targets {
			if id != allDPs {
				if err := tx.QueryRow(`SELECT COUNT(*) FROM dps WHERE id = ?`, id).Scan(&n); err != nil {
					return err
				}
				if n == 0 {
					return api.Errorf(http.StatusNotFound, "unknown_dp", "no DP %q has registered (ibcm dp list)", id)
				}
			}
			if _, err := tx.Exec(`INSERT INTO distributions (name, version, dp_id, created) VALUES (?, ?, ?, ?) ON CONFLICT (name, version, dp_id) DO NOTHING`,
				name, version, id, m.now().Unix()); err != nil {
				return err
			}
		}
		if len(dps) == 0 {
			return m.hub.publish(tx, siteEvent{Kind: kindContent})
		}
		for _, id := range dps {
			if err := m.hub.publish(tx, siteEvent{Kind: kindContent, Device: id}); err != nil {
				return err
			}
		}
		return nil
	})
}
