// Package sitedbtest owns the test helpers that run one test against every backend of the
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

// Drivers are the backends every store test runs against.
var Drivers = []sitedb.Driver{sitedb.SQLite, sitedb.Postgres}

// NewDSN returns the DSN of a fresh, empty database of the given driver.
func NewDSN(t testing.TB, driver sitedb.Driver) string {
	t.Helper()
	if driver == sitedb.Postgres {
		return pgtest.DSN(t)
	}
	return filepath.Join(t.TempDir(), "site.db")
}

// Open opens dsn, closed when t ends. Opening one DSN twice gives two handles on one
// database, as two servers of a site have.
func Open(t testing.TB, driver sitedb.Driver, dsn string) *sitedb.DB {
	t.Helper()
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
	for _, d := range Drivers {
		t.Run(string(d), func(t *testing.T) { fn(t, Open(t, d, NewDSN(t, d))) })
	}
}
