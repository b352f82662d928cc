// Package sitedb owns the connection to the site database: it opens SQLite or
// PostgreSQL, applies each component's numbered migrations, and hides the few
// differences between the two SQL dialects from the code that uses it.
//
// # Opening
//
//	db, err := sitedb.Open(ctx, sitedb.SQLite, "/var/lib/ibcm/site.db")
//	db, err := sitedb.Open(ctx, sitedb.Postgres, "postgres://ibcm@db/ibcm?sslmode=verify-full")
//
// A SQLite database is a file, created with mode 0600 when missing, in WAL
// mode with foreign keys on, a 10 s busy timeout and write transactions that
// take the write lock when they begin (BEGIN IMMEDIATE), so two transactions
// never deadlock upgrading a read lock. PostgreSQL is reached through
// github.com/lib/pq with a URL or key=value DSN.
//
// # Queries
//
// Queries are written once, with ? placeholders:
//
//	row := db.QueryRow(ctx, "SELECT name FROM devices WHERE id = ?", id)
//
// For PostgreSQL each ? outside quoted strings, quoted identifiers and comments
// is rewritten to $1, $2, ... (the rewrite is cached per query text).
//
// Transactions run a function and commit when it returns nil:
//
//	err := db.Tx(ctx, func(tx *sitedb.Tx) error {
//		if _, err := tx.Exec("UPDATE devices SET location = ? WHERE id = ?", loc, id); err != nil {
//			return err
//		}
//		tx.Notify("device_changed", id)
//		return nil
//	})
//
// The error returned by the function is returned unchanged. Inside fn, use tx
// and never db: on SQLite a second writer waits for the lock that tx holds.
//
// # Notifications
//
// Notify and Listen carry short text payloads between the processes that share
// the database: LISTEN/NOTIFY on PostgreSQL, an in-process hub on SQLite (shared
// by every DB opened on the same file in one process; SQLite has no way to
// reach other processes). A notification queued with Tx.Notify is delivered
// only if the transaction commits; identical notifications queued in one
// transaction are delivered once, as PostgreSQL does. The channel returned by
// Listen first receives "" when the subscription is live, and "" again
// whenever events may have been missed (reconnect, slow reader): the receiver
// should then reload its state. Payloads are never empty. ListenWithDown also
// says Down while a PostgreSQL listener is disconnected, for readers that must
// stop trusting what they hold until the next "".
//
// Since events on SQLite never leave the process, a process that serves site roles on a
// SQLite store holds LockServing for its life: a second serving process on the same file
// is refused with ErrServedElsewhere instead of silently missing every event.
//
// # Migrations
//
// Each component keeps its schema in numbered files, NNN_name.sql, usually
// embedded:
//
//	//go:embed migrations/*.sql
//	var migrationFS embed.FS
//
//	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
//	err = db.Migrate(ctx, "ca", ms)
//
// Applied versions are recorded in schema_migrations(component, version, name,
// applied_at). Each pending migration runs in its own transaction together with
// its schema_migrations row, so a failing migration leaves nothing behind; on
// PostgreSQL an advisory lock serialises processes migrating at the same time.
//
// # Dialect
//
// Migration and query SQL is written once in the subset both databases accept:
// TEXT, INTEGER, BIGINT, BLOB for byte strings, PRIMARY KEY, UNIQUE,
// REFERENCES, CREATE INDEX, INSERT ... ON CONFLICT DO NOTHING / DO UPDATE.
// The only translation applied to migrations is the type name BLOB (whole word,
// upper case) to BYTEA on PostgreSQL; queries get only the placeholder rewrite.
// Store times as BIGINT unix seconds (or nanoseconds), booleans as INTEGER 0/1.
// Use IsUniqueViolation to recognise a duplicate key on either backend.
package sitedb
