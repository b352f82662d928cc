// Package sitedbtest owns the test helper that runs one test against every backend of the
// site database: a fresh SQLite file and a fresh database on the throwaway PostgreSQL of
// package pgtest. A package using it needs
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
package sitedbtest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// Open returns a fresh, empty site database of the given driver, closed when t ends.
func Open(t testing.TB, driver sitedb.Driver) *sitedb.DB {
	t.Helper()
	dsn := filepath.Join(t.TempDir(), "site.db")
	if driver == sitedb.Postgres {
		dsn = pgtest.DSN(t)
	}
	db, err := sitedb.Open(context.Background(), driver, dsn)
	if err != nil {
		t.Fatalf("opening %s store: %v", driver, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// ForEach runs fn as a subtest once per backend, each with a fresh database.
func ForEach(t *testing.T, fn func(t *testing.T, db *sitedb.DB)) {
	t.Helper()
	for _, d := range []sitedb.Driver{sitedb.SQLite, sitedb.Postgres} {
		t.Run(string(d), func(t *testing.T) { fn(t, Open(t, d)) })
	}
}
