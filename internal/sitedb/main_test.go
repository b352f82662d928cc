package sitedb

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// forEachBackend runs fn as a parallel subtest against a fresh SQLite file and
// a fresh PostgreSQL database.
func forEachBackend(t *testing.T, fn func(t *testing.T, db *DB)) {
	t.Helper()
	for _, driver := range []Driver{SQLite, Postgres} {
		t.Run(string(driver), func(t *testing.T) {
			t.Parallel()
			fn(t, openFresh(t, driver))
		})
	}
}

// openFresh opens a new empty database, closed when t ends.
func openFresh(t *testing.T, driver Driver) *DB {
	t.Helper()
	var dsn string
	switch driver {
	case SQLite:
		dsn = filepath.Join(t.TempDir(), "site.db")
	case Postgres:
		dsn = pgtest.DSN(t)
	}
	return openDSN(t, driver, dsn)
}

// reopen opens a second DB on the same database as db, as another process
// would.
func reopen(t *testing.T, db *DB) *DB {
	t.Helper()
	if db.driver == SQLite {
		return openDSN(t, SQLite, db.hub.path)
	}
	return openDSN(t, Postgres, db.dsn)
}

func openDSN(t *testing.T, driver Driver, dsn string) *DB {
	t.Helper()
	db, err := Open(testContext(t), driver, dsn)
	if err != nil {
		t.Fatalf("Open(%s, %q): %v", driver, dsn, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db
}

// testContext is cancelled when t ends, and after 30 s at the latest.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// mustExec runs statements on db, failing t on error.
func mustExec(t *testing.T, db *DB, queries ...string) {
	t.Helper()
	for _, q := range queries {
		if _, err := db.Exec(testContext(t), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}
