package sitedb

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Migration is one numbered schema change of a component.
type Migration struct {
	Version int    // > 0, unique within the component
	Name    string // file name, e.g. "001_init.sql"; recorded in schema_migrations
	SQL     string // one or more statements separated by ;
}

func (m Migration) String() string { return fmt.Sprintf("%d (%s)", m.Version, m.Name) }

// migrationFile is the required name of a migration file: a version of at
// least three digits, an underscore, a lower-case name and ".sql".
var migrationFile = regexp.MustCompile(`^([0-9]{3,})_([a-z0-9][a-z0-9_-]*)\.sql$`)

// LoadMigrations reads the *.sql files of dir in fsys, named NNN_name.sql, and
// returns them sorted by version. A .sql file with another name, an empty
// file or two files with the same version is an error; other files are
// ignored.
func LoadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("loading migrations: %w", err)
	}
	var ms []Migration
	byVersion := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			continue
		}
		match := migrationFile.FindStringSubmatch(name)
		if match == nil {
			return nil, fmt.Errorf("loading migrations: %s: file name must be NNN_name.sql (3+ digits, then a-z 0-9 _ -)", path.Join(dir, name))
		}
		v, err := strconv.Atoi(match[1])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("loading migrations: %s: version must be a positive number", path.Join(dir, name))
		}
		if prev, ok := byVersion[v]; ok {
			return nil, fmt.Errorf("loading migrations: %s and %s have the same version %d", prev, name, v)
		}
		byVersion[v] = name
		body, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("loading migrations: %w", err)
		}
		if strings.TrimSpace(string(body)) == "" {
			return nil, fmt.Errorf("loading migrations: %s is empty", path.Join(dir, name))
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(body)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	return ms, nil
}

// migrateLockKey is the pg_advisory_xact_lock key that serialises migrations
// on PostgreSQL ("ibcm-mig" in ASCII).
const migrateLockKey int64 = 0x6962636d2d6d6967

const createSchemaMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
	component  TEXT    NOT NULL,
	version    INTEGER NOT NULL,
	name       TEXT    NOT NULL,
	applied_at BIGINT  NOT NULL,
	PRIMARY KEY (component, version)
)`

// Migrate applies the migrations of component that schema_migrations does not
// list yet, in version order. Each runs in its own transaction with its
// schema_migrations row, so a failing migration leaves the schema as it was
// and Migrate returns an error naming component, version and file. Running
// Migrate again, or from several processes at once, is safe.
func (db *DB) Migrate(ctx context.Context, component string, ms []Migration) error {
	if component == "" {
		return errors.New("migrating: empty component name")
	}
	ms = slices.Clone(ms)
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i, m := range ms {
		if m.Version <= 0 {
			return fmt.Errorf("migrating %s: migration %s: version must be positive", component, m)
		}
		if i > 0 && ms[i-1].Version == m.Version {
			return fmt.Errorf("migrating %s: migrations %s and %s have the same version", component, ms[i-1], m)
		}
	}

	err := db.Tx(ctx, func(tx *Tx) error {
		if err := tx.lockMigrations(); err != nil {
			return err
		}
		_, err := tx.tx.ExecContext(ctx, createSchemaMigrations)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrating %s: creating schema_migrations: %w", component, err)
	}

	applied, err := db.appliedVersions(ctx, component)
	if err != nil {
		return fmt.Errorf("migrating %s: %w", component, err)
	}
	for _, m := range ms {
		if applied[m.Version] {
			continue
		}
		if err := db.applyMigration(ctx, component, m); err != nil {
			return fmt.Errorf("migrating %s to version %s: %w", component, m, err)
		}
	}
	return nil
}

func (db *DB) appliedVersions(ctx context.Context, component string) (map[int]bool, error) {
	rows, err := db.Query(ctx, "SELECT version FROM schema_migrations WHERE component = ?", component)
	if err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	defer rows.Close()
	applied := map[int]bool{}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("reading schema_migrations: %w", err)
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading schema_migrations: %w", err)
	}
	return applied, nil
}

func (db *DB) applyMigration(ctx context.Context, component string, m Migration) error {
	return db.Tx(ctx, func(tx *Tx) error {
		if err := tx.lockMigrations(); err != nil {
			return err
		}
		// Another process may have applied it while we waited for the lock.
		var n int
		err := tx.QueryRow("SELECT COUNT(*) FROM schema_migrations WHERE component = ? AND version = ?",
			component, m.Version).Scan(&n)
		if err != nil {
			return fmt.Errorf("reading schema_migrations: %w", err)
		}
		if n > 0 {
			return nil
		}
		// No rebinding: migration text has no parameters and may contain '?'.
		if _, err := tx.tx.ExecContext(ctx, db.translateDDL(m.SQL)); err != nil {
			return err
		}
		_, err = tx.Exec("INSERT INTO schema_migrations (component, version, name, applied_at) VALUES (?, ?, ?, ?)",
			component, m.Version, m.Name, db.now().Unix())
		if err != nil {
			return fmt.Errorf("recording in schema_migrations: %w", err)
		}
		return nil
	})
}

// lockMigrations serialises migrating processes on PostgreSQL until the end
// of the transaction. On SQLite the transaction already holds the write lock.
func (tx *Tx) lockMigrations() error {
	if tx.db.driver != Postgres {
		return nil
	}
	if _, err := tx.Exec("SELECT pg_advisory_xact_lock(?)", migrateLockKey); err != nil {
		return fmt.Errorf("taking migration lock: %w", err)
	}
	return nil
}

var blobType = regexp.MustCompile(`\bBLOB\b`)

// translateDDL turns migration SQL written in the common dialect into db's.
func (db *DB) translateDDL(sql string) string {
	if db.driver == Postgres {
		return blobType.ReplaceAllString(sql, "BYTEA")
	}
	return sql
}
