-- Who may do what (DESIGN.md §9): users, custom roles and assignments. The built-in roles
-- live in code (roles.go), so a new release can add a permission to them.
CREATE TABLE access_users (
    name         TEXT PRIMARY KEY,          -- the common name of the user's certificates
    display_name TEXT NOT NULL DEFAULT '',
    title        TEXT NOT NULL DEFAULT '',
    org          TEXT NOT NULL DEFAULT '',
    disabled_at  BIGINT,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL
);

CREATE TABLE access_roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    permissions TEXT NOT NULL,              -- names separated by commas (Set.String)
    created_at  BIGINT NOT NULL
);

CREATE TABLE access_assignments (
    user_name  TEXT NOT NULL REFERENCES access_users (name),
    role_name  TEXT NOT NULL,               -- a built-in role or an access_roles row
    scope      TEXT NOT NULL DEFAULT '',    -- a device group; '' = every device and the site
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (user_name, role_name, scope)
);
CREATE INDEX access_assignments_role ON access_assignments (role_name);
