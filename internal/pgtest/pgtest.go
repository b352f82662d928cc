package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/peertest"
)

// shared is the server of this test binary, started by the first DSN call.
var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Run runs the tests of m and then stops the shared server if a test started
// it. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
func Run(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// DSN returns the DSN of a new, empty database on the shared server, starting
// the server on first use. The database is dropped when t ends. Without the
// server binaries it skips t, or fails it when CI=true.
func DSN(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.srv, shared.err = Start(ctx)
	})
	if errors.Is(shared.err, ErrNotFound) {
		peertest.Missing(t, shared.err.Error())
	}
	if shared.err != nil {
		t.Fatalf("%v", shared.err)
	}
	srv := shared.srv
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.dropDatabase(ctx, dsn); err != nil {
			t.Errorf("%v", err)
		}
	})
	return dsn
}
