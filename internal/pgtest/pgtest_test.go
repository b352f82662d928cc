package pgtest

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"time"

	_ "github.com/lib/pq"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func TestDSNGivesFreshDatabases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := DSN(t), DSN(t)
	if a == b {
		t.Fatalf("DSN returned %q twice", a)
	}
	for _, dsn := range []string{a, b} {
		db, err := sql.Open("postgres", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n int
		err = db.QueryRowContext(ctx, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n)
		if err != nil {
			t.Fatalf("querying %s: %v", dsn, err)
		}
		if n != 0 {
			t.Errorf("%s: %d tables in a fresh database", dsn, n)
		}
		if _, err := db.ExecContext(ctx, "CREATE TABLE t (x INTEGER)"); err != nil {
			t.Fatalf("creating a table in %s: %v", dsn, err)
		}
	}
}

func TestStartStop(t *testing.T) {
	if _, err := findBinaries(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := s.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("ping %s: %v", dsn, err)
	}
	db.Close()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.dir); !os.IsNotExist(err) {
		t.Errorf("server directory %s still there after Stop (stat: %v)", s.dir, err)
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int // sign
	}{
		{"15", "15", 0},
		{"16", "15", 1},
		{"9.6", "10", -1},
		{"10", "9.6", 1},
		{"9.6", "9.5", 1},
	}
	for _, tt := range tests {
		t.Run(tt.a+"_vs_"+tt.b, func(t *testing.T) {
			got := compareVersions(tt.a, tt.b)
			if sign(got) != tt.want {
				t.Errorf("compareVersions(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

func sign(x int) int {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}

// TestRestartKeepsData: StopServer and StartServer keep the cluster and the port, and with
// SynchronousCommit a commit survives a crash of the server (-m immediate).
func TestRestartKeepsData(t *testing.T) {
	if _, err := findBinaries(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, SynchronousCommit())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	dsn, err := s.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	for i, mode := range []string{"fast", "immediate"} {
		if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		if err := s.StopServer(ctx, mode); err != nil {
			t.Fatal(err)
		}
		if err := db.PingContext(ctx); err == nil {
			t.Fatalf("-m %s: the server still answers", mode)
		}
		if err := s.StartServer(ctx); err != nil {
			t.Fatal(err)
		}
		var n int
		// the pool's connection died with the server: database/sql dials again
		for try := 0; ; try++ {
			err = db.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n)
			if err == nil || try == 3 {
				break
			}
		}
		if err != nil || n != i+1 {
			t.Fatalf("after -m %s and a start on the same port: %d rows (%v), want %d", mode, n, err, i+1)
		}
	}
}

// Start turns durability off; Durable leaves it on, as a production server runs.
func TestDurability(t *testing.T) {
	if _, err := findBinaries(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, Durable())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	}()
	show := func(admin *sql.DB, setting string) string {
		var v string
		if err := admin.QueryRowContext(ctx, "SHOW "+setting).Scan(&v); err != nil {
			t.Fatalf("SHOW %s: %v", setting, err)
		}
		return v
	}
	shared := DSN(t) // the shared server, from Start
	db, err := sql.Open("postgres", shared)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, setting := range []string{"fsync", "synchronous_commit", "full_page_writes"} {
		if v := show(s.admin, setting); v != "on" {
			t.Errorf("Durable: %s = %s, want on", setting, v)
		}
		if v := show(db, setting); v != "off" {
			t.Errorf("Start: %s = %s, want off", setting, v)
		}
	}
}
