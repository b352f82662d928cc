package access

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Outcomes callers act on.
var (
	ErrUnknownUser = errors.New("unknown user")
	ErrUnknownRole = errors.New("unknown role")
	ErrExists      = errors.New("already exists")
	ErrBuiltIn     = errors.New("built-in role")
	ErrInUse       = errors.New("role is assigned")
	ErrInvalid     = errors.New("invalid")
)

// Store keeps users, custom roles and assignments in the site database.
type Store struct {
	db  *sitedb.DB
	now func() time.Time
}

// Open applies the access migrations to db and returns its store.
func Open(ctx context.Context, db *sitedb.DB) (*Store, error) {
	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, "access", ms); err != nil {
		return nil, err
	}
	return &Store{db: db, now: time.Now}, nil
}

// User is a person who works on the site: a helper or an administrator.
type User struct {
	Name        string     `json:"name"`
	DisplayName string     `json:"display_name,omitempty"`
	Title       string     `json:"title,omitempty"`
	Org         string     `json:"org,omitempty"`
	DisabledAt  *time.Time `json:"disabled_at,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	CreatedBy   string     `json:"created_by"`
}

// Assignment gives a user a role over a scope: a device group, or "" for every device and
// the site.
type Assignment struct {
	User  string `json:"user"`
	Role  string `json:"role"`
	Scope string `json:"scope,omitempty"`
}

var (
	userName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)
	roleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$`)
)

// ValidUserName tells whether name may name a user: 1 to 64 letters, digits and . _ @ -,
// starting with a letter or digit (it becomes a certificate's common name).
func ValidUserName(name string) error {
	if !userName.MatchString(name) {
		return fmt.Errorf("%w user name %q: 1 to 64 letters, digits and . _ @ -, starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

func validText(what, s string, max int) error {
	if len(s) > max || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%w %s: at most %d bytes, no control characters", ErrInvalid, what, max)
	}
	return nil
}

// AddUser records a new user.
func (s *Store) AddUser(ctx context.Context, u User, by string) error {
	if err := ValidUserName(u.Name); err != nil {
		return err
	}
	for what, v := range map[string]string{"display name": u.DisplayName, "title": u.Title, "organisation": u.Org} {
		if err := validText(what, v, 128); err != nil {
			return err
		}
	}
	return s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM access_users WHERE name = ?`, u.Name).Scan(&n); err != nil {
			return fmt.Errorf("adding user: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("user %q: %w", u.Name, ErrExists)
		}
		if _, err := tx.Exec(`INSERT INTO access_users (name, display_name, title, org, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
			u.Name, u.DisplayName, u.Title, u.Org, s.now().Unix(), by); err != nil {
			return fmt.Errorf("adding user: %w", err)
		}
		return nil
	})
}

const userColumns = `name, display_name, title, org, disabled_at, created_at, created_by`

func scanUser(row interface{ Scan(...any) error }) (User, error) {
	var u User
	var disabled sql.NullInt64
	var created int64
	if err := row.Scan(&u.Name, &u.DisplayName, &u.Title, &u.Org, &disabled, &created, &u.CreatedBy); err != nil {
		return User{}, err
	}
	u.CreatedAt = time.Unix(created, 0).UTC()
	if disabled.Valid {
		t := time.Unix(disabled.Int64, 0).UTC()
		u.DisabledAt = &t
	}
	return u, nil
}

// User returns one user.
func (s *Store) User(ctx context.Context, name string) (User, error) {
	u, err := scanUser(s.db.QueryRow(ctx, `SELECT `+userColumns+` FROM access_users WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("%w %q", ErrUnknownUser, name)
	}
	if err != nil {
		return User{}, fmt.Errorf("reading user: %w", err)
	}
	return u, nil
}

// Users returns every user, by name.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	rows, err := s.db.Query(ctx, `SELECT `+userColumns+` FROM access_users ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing users: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("listing users: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing users: %w", err)
	}
	return out, nil
}

// SetDisabled disables or enables a user. A disabled user has no grants; revoking their
// certificates and ending their sessions is the caller's part.
func (s *Store) SetDisabled(ctx context.Context, name string, disabled bool) error {
	var at any
	if disabled {
		at = s.now().Unix()
	}
	res, err := s.db.Exec(ctx, `UPDATE access_users SET disabled_at = ? WHERE name = ?`, at, name)
	if err != nil {
		return fmt.Errorf("disabling user: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return errors.Join(err, fmt.Errorf("%w %q", ErrUnknownUser, name))
	}
	return nil
}

// CreateRole records a custom role. Its name may not be a built-in role's, whatever the
// case.
func (s *Store) CreateRole(ctx context.Context, r Role) error {
	if !roleName.MatchString(r.Name) {
		return fmt.Errorf("%w role name %q: 1 to 64 letters, digits, spaces and . _ -", ErrInvalid, r.Name)
	}
	if err := validText("description", r.Description, 256); err != nil {
		return err
	}
	if r.Permissions == 0 {
		return fmt.Errorf("%w role %q: no permissions", ErrInvalid, r.Name)
	}
	if builtIn(r.Name) != nil {
		return fmt.Errorf("role %q: %w", r.Name, ErrBuiltIn)
	}
	return s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM access_roles WHERE LOWER(name) = LOWER(?)`, r.Name).Scan(&n); err != nil {
			return fmt.Errorf("creating role: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("role %q: %w", r.Name, ErrExists)
		}
		if _, err := tx.Exec(`INSERT INTO access_roles (name, description, permissions, created_at) VALUES (?, ?, ?, ?)`,
			r.Name, r.Description, r.Permissions.String(), s.now().Unix()); err != nil {
			return fmt.Errorf("creating role: %w", err)
		}
		return nil
	})
}

func builtIn(name string) *Role {
	for i := range BuiltInRoles {
		if strings.EqualFold(BuiltInRoles[i].Name, name) {
			return &BuiltInRoles[i]
		}
	}
	return nil
}

// Role returns a built-in or custom role by name (case does not matter).
func (s *Store) Role(ctx context.Context, name string) (Role, error) {
	return role(func(q string, args ...any) *sql.Row { return s.db.QueryRow(ctx, q, args...) }, name)
}

func role(queryRow func(string, ...any) *sql.Row, name string) (Role, error) {
	if r := builtIn(name); r != nil {
		return *r, nil
	}
	var r Role
	var perms string
	err := queryRow(`SELECT name, description, permissions FROM access_roles WHERE LOWER(name) = LOWER(?)`, name).Scan(&r.Name, &r.Description, &perms)
	if errors.Is(err, sql.ErrNoRows) {
		return Role{}, fmt.Errorf("%w %q", ErrUnknownRole, name)
	}
	if err != nil {
		return Role{}, fmt.Errorf("reading role: %w", err)
	}
	if r.Permissions, err = ParseSet(perms); err != nil {
		return Role{}, fmt.Errorf("reading role %q: %w", r.Name, err)
	}
	return r, nil
}

// Roles returns the built-in roles, then the custom ones by name.
func (s *Store) Roles(ctx context.Context) ([]Role, error) {
	out := slices.Clone(BuiltInRoles)
	rows, err := s.db.Query(ctx, `SELECT name, description, permissions FROM access_roles ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Role
		var perms string
		if err := rows.Scan(&r.Name, &r.Description, &perms); err != nil {
			return nil, fmt.Errorf("listing roles: %w", err)
		}
		if r.Permissions, err = ParseSet(perms); err != nil {
			return nil, fmt.Errorf("listing roles: role %q: %w", r.Name, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return out, nil
}

// DeleteRole deletes a custom role that no assignment uses.
func (s *Store) DeleteRole(ctx context.Context, name string) error {
	if builtIn(name) != nil {
		return fmt.Errorf("role %q: %w", name, ErrBuiltIn)
	}
	return s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		r, err := role(tx.QueryRow, name)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM access_assignments WHERE role_name = ?`, r.Name).Scan(&n); err != nil {
			return fmt.Errorf("deleting role: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("role %q: %w to %d user(s); unassign it first", r.Name, ErrInUse, n)
		}
		if _, err := tx.Exec(`DELETE FROM access_roles WHERE name = ?`, r.Name); err != nil {
			return fmt.Errorf("deleting role: %w", err)
		}
		return nil
	})
}

// ValidScope tells whether s may be an assignment's scope: a device group's name, at
// most 128 bytes without control characters, or "" for every device and the site.
func ValidScope(s string) error { return validText("scope", s, 128) }

// Assign gives user role over each scope ("" for every device and the site). Assigning
// what is already assigned changes nothing.
func (s *Store) Assign(ctx context.Context, user, roleName string, scopes []string, by string) error {
	if len(scopes) == 0 {
		scopes = []string{""}
	}
	for _, sc := range scopes {
		if err := ValidScope(sc); err != nil {
			return err
		}
	}
	return s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		r, err := role(tx.QueryRow, roleName)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM access_users WHERE name = ?`, user).Scan(&n); err != nil {
			return fmt.Errorf("assigning role: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("%w %q", ErrUnknownUser, user)
		}
		for _, sc := range scopes {
			if _, err := tx.Exec(`INSERT INTO access_assignments (user_name, role_name, scope, created_at, created_by)
				VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, user, r.Name, sc, s.now().Unix(), by); err != nil {
				return fmt.Errorf("assigning role: %w", err)
			}
		}
		return nil
	})
}

// Unassign takes role over each scope from user (every scope of the role when none is
// given).
func (s *Store) Unassign(ctx context.Context, user, roleName string, scopes []string) error {
	r, err := s.Role(ctx, roleName)
	if err != nil {
		return err
	}
	q, args := `DELETE FROM access_assignments WHERE user_name = ? AND role_name = ?`, []any{user, r.Name}
	if len(scopes) > 0 {
		q += ` AND scope IN (?` + strings.Repeat(", ?", len(scopes)-1) + `)`
		for _, sc := range scopes {
			args = append(args, sc)
		}
	}
	if _, err := s.db.Exec(ctx, q, args...); err != nil {
		return fmt.Errorf("unassigning role: %w", err)
	}
	return nil
}

// Assignments returns user's assignments.
func (s *Store) Assignments(ctx context.Context, user string) ([]Assignment, error) {
	rows, err := s.db.Query(ctx, `SELECT role_name, scope FROM access_assignments WHERE user_name = ? ORDER BY role_name, scope`, user)
	if err != nil {
		return nil, fmt.Errorf("reading assignments: %w", err)
	}
	defer rows.Close()
	var out []Assignment
	for rows.Next() {
		a := Assignment{User: user}
		if err := rows.Scan(&a.Role, &a.Scope); err != nil {
			return nil, fmt.Errorf("reading assignments: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading assignments: %w", err)
	}
	return out, nil
}

// Grants returns what user may do now: nothing for a disabled user, ErrUnknownUser for
// one who does not exist.
func (s *Store) Grants(ctx context.Context, user string) (Grants, error) {
	u, err := s.User(ctx, user)
	if err != nil {
		return Grants{}, err
	}
	as, err := s.Assignments(ctx, user)
	if err != nil {
		return Grants{}, err
	}
	return s.GrantsFor(ctx, u, as)
}

// GrantsFor returns what u may do through the assignments as (read by Assignments):
// nothing when u is disabled.
func (s *Store) GrantsFor(ctx context.Context, u User, as []Assignment) (Grants, error) {
	g := Grants{User: u.Name}
	if u.DisabledAt != nil {
		return g, nil
	}
	for _, a := range as {
		r, err := s.Role(ctx, a.Role)
		if err != nil {
			return Grants{}, err
		}
		if a.Scope == "" {
			g.Site |= r.Permissions
			continue
		}
		if g.Groups == nil {
			g.Groups = map[string]Set{}
		}
		g.Groups[a.Scope] |= r.Permissions
	}
	return g, nil
}

type grantsKey struct{}

// NewContext returns ctx carrying g: the servers' admin wrappers hand the grants they
// checked to the route this way.
func NewContext(ctx context.Context, g Grants) context.Context {
	return context.WithValue(ctx, grantsKey{}, g)
}

// FromContext returns the grants NewContext put in ctx (none when there are none).
func FromContext(ctx context.Context) Grants {
	g, _ := ctx.Value(grantsKey{}).(Grants)
	return g
}

// Grants is what one user may do.
type Grants struct {
	User   string
	Site   Set            // from assignments over every device and the site
	Groups map[string]Set // from assignments over a device group
}

// Allows reports whether g grants p site-wide: for a permission on devices, on every
// device.
func (g Grants) Allows(p Permission) bool { return g.Site.Has(p) }

// OnDevice reports whether g grants p on a device in groups.
func (g Grants) OnDevice(p Permission, groups []string) bool {
	if !p.OnDevice() {
		return false
	}
	if g.Site.Has(p) {
		return true
	}
	for _, grp := range groups {
		if g.Groups[grp].Has(p) {
			return true
		}
	}
	return false
}

// Scope tells where g grants p: everywhere (all), or only on devices of groups.
func (g Grants) Scope(p Permission) (all bool, groups []string) {
	if g.Site.Has(p) {
		return true, nil
	}
	if !p.OnDevice() {
		return false, nil
	}
	for grp, s := range g.Groups {
		if s.Has(p) {
			groups = append(groups, grp)
		}
	}
	slices.Sort(groups)
	return false, groups
}

// Bootstrap makes each of names a user with the Full Administrator role over the whole
// site when the site has no user at all yet, and reports whether it did: the first admin
// of a new site, and once the holders of an older site's admin certificates, which then
// meant full access. Once any user exists it changes nothing, so later admin
// certificates get only what an assignment gives them.
func (s *Store) Bootstrap(ctx context.Context, names []string, by string) (bool, error) {
	done := false
	err := s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		done = false
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM access_users`).Scan(&n); err != nil {
			return fmt.Errorf("bootstrapping access: %w", err)
		}
		if n > 0 {
			return nil
		}
		now := s.now().Unix()
		for _, name := range names {
			if ValidUserName(name) != nil {
				continue
			}
			if _, err := tx.Exec(`INSERT INTO access_users (name, created_at, created_by) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, name, now, by); err != nil {
				return fmt.Errorf("bootstrapping access: %w", err)
			}
			if _, err := tx.Exec(`INSERT INTO access_assignments (user_name, role_name, scope, created_at, created_by)
				VALUES (?, ?, '', ?, ?) ON CONFLICT DO NOTHING`, name, FullAdministrator, now, by); err != nil {
				return fmt.Errorf("bootstrapping access: %w", err)
			}
			done = true
		}
		return nil
	})
	return done, err
}
