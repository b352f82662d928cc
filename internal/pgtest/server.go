package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"

	"github.com/lib/pq"
)

// ErrNotFound reports that the PostgreSQL server binaries are not installed.
var ErrNotFound = errors.New("PostgreSQL server binaries not found: run `make deps` (apt-get install postgresql) as root")

// Server is a running throwaway PostgreSQL server.
type Server struct {
	dir        string // temporary directory holding everything below
	dataDir    string
	logFile    string
	binDir     string
	runAs      string // system user running the server; "" for the current user
	port       int
	syncCommit bool    // synchronous_commit on
	durable    bool    // fsync, synchronous_commit and full_page_writes on
	admin      *sql.DB // connection to the "postgres" database
}

// Option changes how Start sets up the server.
type Option func(*Server)

// SynchronousCommit keeps synchronous_commit on (fsync stays off): a commit the server
// has acknowledged survives a crash of the server process (StopServer("immediate")),
// though not of the machine. Without it such a crash may lose the last commits.
func SynchronousCommit() Option { return func(s *Server) { s.syncCommit = true } }

// Durable turns durability on as a production server runs (fsync, synchronous_commit and
// full_page_writes): every commit waits for its WAL to reach the disk. For benchmarks that
// measure what a commit costs; tests use the default.
func Durable() Option { return func(s *Server) { s.durable = true } }

// Start initialises a cluster in a new temporary directory and starts a server
// on it, durability off unless an Option says otherwise. The caller must Stop it.
func Start(ctx context.Context, opts ...Option) (*Server, error) {
	binDir, err := findBinaries()
	if err != nil {
		return nil, err
	}
	s := &Server{binDir: binDir}
	for _, o := range opts {
		o(s)
	}
	if os.Geteuid() == 0 {
		s.runAs = "postgres"
	}
	s.dir, err = os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	if err := s.start(ctx); err != nil {
		_ = os.RemoveAll(s.dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context) error {
	if s.runAs != "" {
		u, err := user.Lookup(s.runAs)
		if err != nil {
			return fmt.Errorf("starting PostgreSQL as %s (it refuses to run as root): %w", s.runAs, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(s.dir, uid, gid); err != nil {
			return fmt.Errorf("starting PostgreSQL: %w", err)
		}
	}
	s.dataDir = filepath.Join(s.dir, "data")
	s.logFile = filepath.Join(s.dir, "postgres.log")

	out, err := s.command(ctx, "initdb", "-D", s.dataDir, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput()
	if err != nil {
		return fmt.Errorf("starting PostgreSQL: initdb: %w\n%s", err, tail(out, 30))
	}

	port, err := freePort()
	if err != nil {
		return fmt.Errorf("starting PostgreSQL: picking a port: %w", err)
	}
	s.port = port
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	conf := fmt.Sprintf(`
# pgtest: a throwaway server, durability %[3]s
listen_addresses = '127.0.0.1'
port = %[1]d
unix_socket_directories = '%[2]s'
fsync = %[3]s
synchronous_commit = %[4]s
full_page_writes = %[3]s
max_connections = 200
`, port, s.dir, onOff(s.durable), onOff(s.durable || s.syncCommit))
	if err := appendFile(filepath.Join(s.dataDir, "postgresql.conf"), conf); err != nil {
		return fmt.Errorf("starting PostgreSQL: %w", err)
	}
	if err := s.StartServer(ctx); err != nil {
		return err
	}

	connector, err := pq.NewConnector(s.dsn("postgres"))
	if err != nil {
		s.stopServer()
		return fmt.Errorf("starting PostgreSQL: %w", err)
	}
	s.admin = sql.OpenDB(connector)
	s.admin.SetMaxOpenConns(4)
	if err := s.admin.PingContext(ctx); err != nil {
		_ = s.admin.Close()
		s.stopServer()
		return fmt.Errorf("starting PostgreSQL: connecting: %w\nserver log %s:\n%s", err, s.logFile, s.logTail())
	}
	return nil
}

// NewDatabase creates a new empty database and returns its DSN.
func (s *Server) NewDatabase(ctx context.Context) (dsn string, err error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("creating test database: %w", err)
	}
	name := "t_" + hex.EncodeToString(b[:])
	if _, err := s.admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("creating test database %s: %w", name, err)
	}
	return s.dsn(name), nil
}

// dropDatabase removes the database behind dsn, disconnecting its clients.
func (s *Server) dropDatabase(ctx context.Context, dsn string) error {
	name := dsn[strings.LastIndexByte(dsn, '/')+1 : strings.IndexByte(dsn, '?')]
	if _, err := s.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(name)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping test database %s: %w", name, err)
	}
	return nil
}

// Stop stops the server at once (no checkpoint) and removes its directory.
func (s *Server) Stop() error {
	if s.admin != nil {
		_ = s.admin.Close()
	}
	err := s.stopServer()
	if rmErr := os.RemoveAll(s.dir); rmErr != nil && err == nil {
		err = fmt.Errorf("removing PostgreSQL directory: %w", rmErr)
	}
	return err
}

func (s *Server) stopServer() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return s.StopServer(ctx, "immediate")
}

// StopServer stops the server process and keeps its cluster and port, so StartServer can
// start it again: mode "fast" (pg_ctl stop -m fast: clients are disconnected, a clean
// shutdown) or "immediate" (-m immediate: the server process quits at once, as in a crash,
// and recovers from its WAL on the next start).
func (s *Server) StopServer(ctx context.Context, mode string) error {
	out, err := s.command(ctx, "pg_ctl", "-D", s.dataDir, "-m", mode, "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("stopping PostgreSQL (-m %s): %w\n%s", mode, err, tail(out, 10))
	}
	return nil
}

// StartServer starts the server on its cluster and port, and returns once it accepts
// connections.
func (s *Server) StartServer(ctx context.Context) error {
	// -w waits until the server accepts connections.
	out, err := s.command(ctx, "pg_ctl", "-D", s.dataDir, "-l", s.logFile, "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		return fmt.Errorf("starting PostgreSQL: pg_ctl start: %w\n%s\nserver log %s:\n%s", err, tail(out, 10), s.logFile, s.logTail())
	}
	return nil
}

func (s *Server) dsn(dbname string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, dbname)
}

// command runs a server binary, as s.runAs when set.
func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	bin := filepath.Join(s.binDir, name)
	var cmd *exec.Cmd
	if s.runAs != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", s.runAs, "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	cmd.Dir = s.dir
	return cmd
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return tail(b, 30)
}

// findBinaries returns the directory holding initdb and pg_ctl: the highest
// version under /usr/lib/postgresql (Debian), else the one on PATH.
func findBinaries() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return "", ErrNotFound
	}
	d := filepath.Dir(initdb)
	if !isFile(filepath.Join(d, "pg_ctl")) {
		return "", ErrNotFound
	}
	return d, nil
}

// compareVersions compares dotted version numbers such as "9.6" and "15".
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func freePort() (int, error) { return freeport.Pick() }

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
