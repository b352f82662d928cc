// Package pgtest owns the throwaway PostgreSQL server that tests and
// benchmarks run against: it starts one from the installed server binaries in
// a temporary directory, hands out fresh empty databases, and removes
// everything when done.
//
// In a test package:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
//
//	func TestStore(t *testing.T) {
//		dsn := pgtest.DSN(t) // a new database, dropped when the test ends
//		...
//	}
//
// The server starts on first use, listens on 127.0.0.1 on a free port with
// durability turned off (fsync, synchronous_commit, full_page_writes), and
// is stopped by Run after the tests. When the binaries are missing DSN skips
// the test, or fails it when the environment variable CI is "true", with a
// hint to install them (make deps). Run as root, the server runs as the
// postgres system user, since PostgreSQL refuses to run as root.
//
// Programs that are not tests (benchmarks), and tests that take the server down
// (Server.StopServer, Server.StartServer: same cluster, same port), use Start,
// Server.NewDatabase and Server.Stop directly; SynchronousCommit makes a server
// whose acknowledged commits survive a crash of the server process, and Durable
// one with durability on, as a production server runs, for measuring what a
// commit costs.
package pgtest
