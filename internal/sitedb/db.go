package sitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// sqlitePragmas configures every SQLite connection; _txlock=immediate makes
// BeginTx issue BEGIN IMMEDIATE so a write transaction holds the write lock
// from its start instead of failing with SQLITE_BUSY when it upgrades.
// sqliteMaxConns bounds a SQLite store's connections (readers run side by side in WAL mode).
const sqliteMaxConns = 8

const sqlitePragmas = "_pragma=busy_timeout(10000)" +
	"&_pragma=journal_mode(WAL)" +
	"&_pragma=foreign_keys(1)" +
	"&_pragma=synchronous(NORMAL)" +
	"&_txlock=immediate"

// DB is an open site database. It is safe for concurrent use.
type DB struct {
	driver Driver
	sql    *sql.DB
	dsn    string // postgres: for pq.NewListener
	hub    *hub   // sqlite: notifications between DBs on this file
	closed sync.Once
	now    func() time.Time

	rebound sync.Map // query text -> postgres query text

	prepMu sync.Mutex
	prep   map[string]*sql.Stmt // QueryNative's prepared statements
}

// Open opens the database and checks that it answers. For SQLite dsn is a
// file path (created with mode 0600 if missing); for PostgreSQL it is a lib/pq
// URL or key=value connection string.
func Open(ctx context.Context, driver Driver, dsn string) (*DB, error) {
	switch driver {
	case SQLite:
		return openSQLite(ctx, dsn)
	case Postgres:
		return openPostgres(ctx, dsn)
	default:
		_, err := ParseDriver(string(driver))
		return nil, err
	}
}

func openSQLite(ctx context.Context, path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("opening sqlite database: empty file path")
	}
	if strings.ContainsRune(path, '?') || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("opening sqlite database %q: want a plain file path", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("opening sqlite database %q: %w", path, err)
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening sqlite database: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("opening sqlite database: %w", err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	sdb, err := sql.Open("sqlite", abs+"?"+sqlitePragmas)
	if err != nil {
		return nil, fmt.Errorf("opening sqlite database %s: %w", abs, err)
	}
	// SQLite writes one transaction at a time; a waiting writer sleeps in a system call,
	// which costs an OS thread for as long as it waits. A burst of requests (10,000 devices
	// reconnecting) then left hundreds of threads behind. So connections are few and
	// requests queue for one in the pool instead.
	sdb.SetMaxOpenConns(sqliteMaxConns)
	sdb.SetMaxIdleConns(sqliteMaxConns)
	sdb.SetConnMaxIdleTime(5 * time.Minute)
	if err := sdb.PingContext(ctx); err != nil {
		_ = sdb.Close()
		return nil, fmt.Errorf("opening sqlite database %s: %w", abs, err)
	}
	return &DB{driver: SQLite, sql: sdb, hub: acquireHub(abs), now: time.Now}, nil
}

func openPostgres(ctx context.Context, dsn string) (*DB, error) {
	cfg, err := pq.NewConfig(dsn)
	if err == nil && !strings.Contains(dsn, "binary_parameters") {
		// One round trip per statement with arguments instead of two (parse, then bind
		// and execute): a group of enrollments is a few statements, so this is most of
		// what it costs on the server.
		cfg.BinaryParameters = true
	}
	var connector *pq.Connector
	if err == nil {
		connector, err = pq.NewConnectorConfig(cfg)
	}
	if err != nil {
		// The parser's error quotes the DSN, password included: say what is wrong without it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("opening postgres database: the DSN does not parse (%s); it is not shown because it may hold a password", redactDSN(err.Error(), dsn))
	}
	sdb := sql.OpenDB(connector)
	sdb.SetMaxOpenConns(20)
	sdb.SetMaxIdleConns(10)
	sdb.SetConnMaxIdleTime(5 * time.Minute)
	sdb.SetConnMaxLifetime(time.Hour)
	if err := sdb.PingContext(ctx); err != nil {
		_ = sdb.Close()
		return nil, fmt.Errorf("opening postgres database: %w", err)
	}
	return &DB{driver: Postgres, sql: sdb, dsn: dsn, now: time.Now}, nil
}

// Driver reports the backend of db.
func (db *DB) Driver() Driver { return db.driver }

// Close closes the connection pool. Listen subscriptions end with their
// context, not with Close.
func (db *DB) Close() error {
	db.closed.Do(func() {
		if db.hub != nil {
			releaseHub(db.hub)
		}
		db.prepMu.Lock()
		for _, st := range db.prep {
			_ = st.Close()
		}
		db.prep = nil
		db.prepMu.Unlock()
	})
	return db.sql.Close()
}

// Exec runs a statement written with ? placeholders.
func (db *DB) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return db.sql.ExecContext(ctx, db.rebind(query), args...)
}

// Query runs a query written with ? placeholders.
func (db *DB) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return db.sql.QueryContext(ctx, db.rebind(query), args...)
}

// QueryNative runs a query written in the backend's own placeholder syntax ($1 on
// PostgreSQL), prepared once per connection while no more than maxPrepared such queries
// are known: the server then parses and plans it once instead of on every call. It is
// for statements built for one backend whose text takes a few shapes (a group of n rows).
func (db *DB) QueryNative(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := db.prepared(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return db.sql.QueryContext(ctx, query, args...)
}

// maxPrepared bounds the statements QueryNative keeps prepared.
const maxPrepared = 64

func (db *DB) prepared(ctx context.Context, query string) *sql.Stmt {
	db.prepMu.Lock()
	defer db.prepMu.Unlock()
	if st, ok := db.prep[query]; ok {
		return st
	}
	if len(db.prep) >= maxPrepared {
		return nil
	}
	st, err := db.sql.PrepareContext(ctx, query)
	if err != nil {
		return nil // the plain query says what is wrong
	}
	if db.prep == nil {
		db.prep = map[string]*sql.Stmt{}
	}
	db.prep[query] = st
	return st
}

// QueryRow runs a query written with ? placeholders that returns at most one row.
func (db *DB) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return db.sql.QueryRowContext(ctx, db.rebind(query), args...)
}

// rebind returns query in the placeholder syntax of db's backend.
func (db *DB) rebind(query string) string {
	if db.driver != Postgres {
		return query
	}
	if q, ok := db.rebound.Load(query); ok {
		return q.(string)
	}
	q := rebindDollar(query)
	db.rebound.Store(query, q)
	return q
}

// Tx is a transaction started by DB.Tx. Its methods use the context given to
// DB.Tx.
type Tx struct {
	db    *DB
	ctx   context.Context
	tx    *sql.Tx
	notes []notification
}

type notification struct{ channel, payload string }

// Tx begins a transaction, runs fn, and commits if fn returns nil or rolls
// back otherwise. fn's error is returned unchanged. Notifications queued with
// tx.Notify are delivered after a successful commit and never after a
// rollback.
func (db *DB) Tx(ctx context.Context, fn func(tx *Tx) error) error {
	stx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	tx := &Tx{db: db, ctx: ctx, tx: stx}
	committed := false
	defer func() {
		if !committed {
			_ = stx.Rollback()
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	for _, n := range tx.notes {
		if err := validateNotification(n.channel, n.payload); err != nil {
			return err
		}
	}
	if db.driver == Postgres {
		// PostgreSQL queues these itself and delivers them at COMMIT.
		for _, n := range tx.notes {
			if _, err := stx.ExecContext(ctx, "SELECT pg_notify($1, $2)", n.channel, n.payload); err != nil {
				return fmt.Errorf("queueing notification on %q: %w", n.channel, err)
			}
		}
	}
	committed = true
	if err := stx.Commit(); err != nil {
		return fmt.Errorf("committing transaction: %w", err)
	}
	if db.hub != nil {
		for _, n := range tx.notes {
			db.hub.publish(n.channel, n.payload)
		}
	}
	return nil
}

// Exec runs a statement written with ? placeholders inside the transaction.
func (tx *Tx) Exec(query string, args ...any) (sql.Result, error) {
	return tx.tx.ExecContext(tx.ctx, tx.db.rebind(query), args...)
}

// Query runs a query written with ? placeholders inside the transaction.
func (tx *Tx) Query(query string, args ...any) (*sql.Rows, error) {
	return tx.tx.QueryContext(tx.ctx, tx.db.rebind(query), args...)
}

// QueryRow runs a query written with ? placeholders inside the transaction.
func (tx *Tx) QueryRow(query string, args ...any) *sql.Row {
	return tx.tx.QueryRowContext(tx.ctx, tx.db.rebind(query), args...)
}

// Notify queues a notification that is delivered only if the transaction
// commits. Identical notifications are delivered once. An empty channel or
// payload makes the transaction fail with ErrBadNotification.
func (tx *Tx) Notify(channel, payload string) {
	n := notification{channel, payload}
	for _, m := range tx.notes {
		if m == n {
			return
		}
	}
	tx.notes = append(tx.notes, n)
}

// redactDSN removes the DSN, and any password in it, from a message.
func redactDSN(msg, dsn string) string {
	msg = strings.ReplaceAll(msg, dsn, "<dsn>")
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "<password>")
		}
	}
	return msg
}
