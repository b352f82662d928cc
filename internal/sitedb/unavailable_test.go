package sitedb

import (
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/lib/pq"

	"github.com/ibcm-project/ibcm/internal/freeport"
)

// A database that cannot be reached is unavailable; a statement the database refuses is not.
func TestIsUnavailable(t *testing.T) {
	port, err := freeport.Pick() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	closed, err := sql.Open("postgres", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable&connect_timeout=5", port))
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()
	_, refused := closed.Exec(`SELECT 1`)

	db := openFresh(t, SQLite)
	_, syntax := db.Exec(testContext(t), `SELEC 1`)
	mustExec(t, db, `CREATE TABLE u (k TEXT PRIMARY KEY)`, `INSERT INTO u VALUES ('a')`)
	_, dup := db.Exec(testContext(t), `INSERT INTO u VALUES ('a')`)

	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"wrapped", fmt.Errorf("storing: %w", refused), true},
		{"server shutting down", &pq.Error{Code: "57P01"}, true},
		{"cannot connect now", &pq.Error{Code: "57P03"}, true},
		{"connection exception", &pq.Error{Code: "08006"}, true},
		{"too many connections", &pq.Error{Code: "53300"}, true},
		{"bad connection", fmt.Errorf("x: %w", sql.ErrConnDone), true},
		{"syntax", syntax, false},
		{"duplicate key", dup, false},
		{"pq syntax", &pq.Error{Code: "42601"}, false},
		{"no rows", sql.ErrNoRows, false},
		{"other", errors.New("boom"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil && tc.want {
				t.Fatal("no error to classify")
			}
			if got := IsUnavailable(tc.err); got != tc.want {
				t.Errorf("IsUnavailable(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
