package sitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestParseDriver(t *testing.T) {
	tests := []struct {
		in      string
		want    Driver
		wantErr bool
	}{
		{"sqlite", SQLite, false},
		{"postgres", Postgres, false},
		{"", "", true},
		{"mysql", "", true},
		{"Postgres", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDriver(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseDriver(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestRebindDollar(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"none", "SELECT 1", "SELECT 1"},
		{"two", "SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = $1 AND c = $2"},
		{"literal", "SELECT ?, 'what?', ?", "SELECT $1, 'what?', $2"},
		{"doubled quote", "SELECT 'it''s?', ?", "SELECT 'it''s?', $1"},
		{"identifier", `SELECT "a?b" FROM t WHERE x = ?`, `SELECT "a?b" FROM t WHERE x = $1`},
		{"line comment", "SELECT ? -- why?\n, ?", "SELECT $1 -- why?\n, $2"},
		{"block comment", "SELECT /* ? */ ?", "SELECT /* ? */ $1"},
		{"unterminated literal", "SELECT ?, 'oops?", "SELECT $1, 'oops?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rebindDollar(tt.in); got != tt.want {
				t.Errorf("rebindDollar(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestQueryPlaceholders(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		ctx := testContext(t)
		var a, lit, b string
		err := db.QueryRow(ctx, "SELECT ?, 'what?', ?", "x", "y").Scan(&a, &lit, &b)
		if err != nil {
			t.Fatal(err)
		}
		if a != "x" || lit != "what?" || b != "y" {
			t.Errorf("got %q %q %q, want x what? y", a, lit, b)
		}

		// BLOB is translated in migrations only.
		err = db.Migrate(ctx, "test", []Migration{{Version: 1, Name: "001_kv.sql", SQL: "CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, "INSERT INTO kv (k, v) VALUES (?, ?)", "k?", []byte{0, 1, 2}); err != nil {
			t.Fatal(err)
		}
		rows, err := db.Query(ctx, "SELECT k, v FROM kv WHERE k = ? AND k <> 'k?x'", "k?")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var k string
			var v []byte
			if err := rows.Scan(&k, &v); err != nil {
				t.Fatal(err)
			}
			if k != "k?" || string(v) != "\x00\x01\x02" {
				t.Errorf("row = %q %x", k, v)
			}
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("%d rows, want 1", n)
		}
	})
}

func TestTx(t *testing.T) {
	errStop := errors.New("stop")
	tests := []struct {
		name    string
		fn      func(tx *Tx) error
		wantErr error
		wantN   int
	}{
		{"commit", func(tx *Tx) error {
			_, err := tx.Exec("INSERT INTO t (x) VALUES (?)", 1)
			return err
		}, nil, 1},
		{"rollback on error", func(tx *Tx) error {
			if _, err := tx.Exec("INSERT INTO t (x) VALUES (?)", 1); err != nil {
				return err
			}
			return fmt.Errorf("giving up: %w", errStop)
		}, errStop, 0},
		{"reads own writes", func(tx *Tx) error {
			if _, err := tx.Exec("INSERT INTO t (x) VALUES (?), (?)", 1, 2); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow("SELECT COUNT(*) FROM t WHERE x > ?", 0).Scan(&n); err != nil {
				return err
			}
			rows, err := tx.Query("SELECT x FROM t")
			if err != nil {
				return err
			}
			rows.Close()
			if n != 2 {
				return fmt.Errorf("count inside tx = %d", n)
			}
			return nil
		}, nil, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, db *DB) {
				mustExec(t, db, "CREATE TABLE t (x INTEGER)")
				err := db.Tx(testContext(t), tt.fn)
				if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
					t.Fatalf("Tx = %v, want %v", err, tt.wantErr)
				}
				var n int
				if err := db.QueryRow(testContext(t), "SELECT COUNT(*) FROM t").Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n != tt.wantN {
					t.Errorf("%d rows after Tx, want %d", n, tt.wantN)
				}
			})
		})
	}
}

func TestTxRollsBackOnPanic(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		mustExec(t, db, "CREATE TABLE t (x INTEGER)")
		func() {
			defer func() {
				if recover() == nil {
					t.Error("panic was swallowed")
				}
			}()
			_ = db.Tx(testContext(t), func(tx *Tx) error {
				if _, err := tx.Exec("INSERT INTO t (x) VALUES (1)"); err != nil {
					return err
				}
				panic("boom")
			})
		}()
		var n int
		if err := db.QueryRow(testContext(t), "SELECT COUNT(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d rows after a panicking Tx, want 0", n)
		}
	})
}

// TestConcurrentReadThenWrite runs transactions that read and then write: on
// SQLite with deferred transactions they would fail with SQLITE_BUSY when
// upgrading their read locks.
func TestConcurrentReadThenWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		mustExec(t, db, "CREATE TABLE counter (n INTEGER)", "INSERT INTO counter (n) VALUES (0)")
		const workers, rounds = 8, 10
		var wg sync.WaitGroup
		errs := make(chan error, workers*rounds)
		for range workers {
			wg.Go(func() {
				for range rounds {
					errs <- db.Tx(testContext(t), func(tx *Tx) error {
						var n int
						if err := tx.QueryRow("SELECT n FROM counter").Scan(&n); err != nil {
							return err
						}
						_, err := tx.Exec("UPDATE counter SET n = n + 1")
						return err
					})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		var n int
		if err := db.QueryRow(testContext(t), "SELECT n FROM counter").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != workers*rounds {
			t.Errorf("counter = %d, want %d", n, workers*rounds)
		}
	})
}

func TestOpenSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "site.db")
	db := openDSN(t, SQLite, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("database file mode %o, want 600", perm)
	}
	pragmas := []struct{ pragma, want string }{
		{"journal_mode", "wal"},
		{"foreign_keys", "1"},
		{"busy_timeout", "10000"},
		{"synchronous", "1"}, // NORMAL
	}
	for _, p := range pragmas {
		t.Run(p.pragma, func(t *testing.T) {
			var got string
			if err := db.QueryRow(testContext(t), "PRAGMA "+p.pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != p.want {
				t.Errorf("PRAGMA %s = %q, want %q", p.pragma, got, p.want)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name   string
		driver Driver
		dsn    string
	}{
		{"unknown driver", Driver("mysql"), "x"},
		{"sqlite empty path", SQLite, ""},
		{"sqlite uri", SQLite, "file:x.db?mode=memory"},
		{"sqlite missing directory", SQLite, filepath.Join(t.TempDir(), "no", "such", "dir", "x.db")},
		{"postgres bad dsn", Postgres, "postgres://%zz"},
		{"postgres nobody listening", Postgres, "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := Open(testContext(t), tt.driver, tt.dsn)
			if err == nil {
				db.Close()
				t.Fatalf("Open(%s, %q) succeeded", tt.driver, tt.dsn)
			}
		})
	}
}

func TestIsUniqueViolation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		mustExec(t, db,
			"CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
			"INSERT INTO u (id, name) VALUES (1, 'a')")
		tests := []struct {
			name  string
			query string
			want  bool
		}{
			{"primary key", "INSERT INTO u (id, name) VALUES (1, 'b')", true},
			{"unique", "INSERT INTO u (id, name) VALUES (2, 'a')", true},
			{"other error", "INSERT INTO missing_table VALUES (1)", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := db.Exec(testContext(t), tt.query)
				if err == nil {
					t.Fatalf("%s succeeded", tt.query)
				}
				if got := IsUniqueViolation(err); got != tt.want {
					t.Errorf("IsUniqueViolation(%v) = %v, want %v", err, got, tt.want)
				}
				if got := IsUniqueViolation(fmt.Errorf("wrapped: %w", err)); got != tt.want {
					t.Errorf("IsUniqueViolation(wrapped %v) = %v, want %v", err, got, tt.want)
				}
			})
		}
		if IsUniqueViolation(nil) || IsUniqueViolation(sql.ErrNoRows) {
			t.Error("IsUniqueViolation true for nil or sql.ErrNoRows")
		}
	})
}

func TestOpenPostgresDoesNotLeakThePassword(t *testing.T) {
	_, err := Open(context.Background(), Postgres, "postgres://ibcm:s3cr%zzet@db.example/ibcm")
	if err == nil || strings.Contains(err.Error(), "s3cr") {
		t.Fatalf("err = %v: must fail without quoting the password", err)
	}
}

// QueryNative prepares a query once per shape and keeps at most maxPrepared of them; past
// that, queries still run, unprepared, and a query that does not prepare still says why
// when it runs.
func TestQueryNativePrepares(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		ctx := testContext(t)
		ph := "?"
		if db.Driver() == Postgres {
			ph = "$1"
		}
		for i := range maxPrepared + 5 {
			for range 2 {
				rows, err := db.QueryNative(ctx, fmt.Sprintf("SELECT %d + %s", i, ph), 1)
				if err != nil {
					t.Fatal(err)
				}
				var n int
				for rows.Next() {
					if err := rows.Scan(&n); err != nil {
						t.Fatal(err)
					}
				}
				if err := errors.Join(rows.Err(), rows.Close()); err != nil || n != i+1 {
					t.Fatalf("query %d: %d, %v", i, n, err)
				}
			}
		}
		db.prepMu.Lock()
		kept := len(db.prep)
		db.prepMu.Unlock()
		if kept != maxPrepared {
			t.Errorf("%d statements kept prepared, want %d", kept, maxPrepared)
		}
		if _, err := db.QueryNative(ctx, "SELECT FROM nowhere WHERE"); err == nil {
			t.Error("a query that does not parse ran")
		}
	})
}
