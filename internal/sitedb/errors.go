package sitedb

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/lib/pq"
	"modernc.org/sqlite"
)

// SQLite extended result codes for a violated UNIQUE or PRIMARY KEY constraint.
const (
	sqliteConstraintPrimaryKey = 1555 // SQLITE_CONSTRAINT_PRIMARYKEY
	sqliteConstraintUnique     = 2067 // SQLITE_CONSTRAINT_UNIQUE
)

// pqUniqueViolation is the SQLSTATE of a duplicate key.
const pqUniqueViolation = "23505"

// ErrBadNotification reports a notification with an empty channel or payload
// (an empty payload is how Listen says "reload").
var ErrBadNotification = errors.New("notification channel and payload must not be empty")

// IsUniqueViolation reports whether err (or an error it wraps) is a
// duplicate-key error from either backend.
func IsUniqueViolation(err error) bool {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return string(pe.Code) == pqUniqueViolation
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqliteConstraintUnique || se.Code() == sqliteConstraintPrimaryKey
	}
	return false
}

// IsUnavailable reports whether err (or an error it wraps) says the database cannot be
// reached right now rather than that the statement is wrong: a refused or broken
// connection, a server shutting down, starting or out of connections, or a SQLite
// database that stayed busy. Servers answer those with 503 and Retry-After, so clients
// back off instead of treating the request as failed for good; the pool reconnects by
// itself once the server is back.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var pe *pq.Error
	if errors.As(err, &pe) {
		code := string(pe.Code)
		return strings.HasPrefix(code, "08") || // connection_exception
			code == "57P01" || code == "57P02" || code == "57P03" || // admin/crash shutdown, cannot connect now
			code == "53300" // too_many_connections
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()&0xff == sqliteBusy || se.Code()&0xff == sqliteLocked
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.As(err, &ne)
}

// SQLite primary result codes of a database another connection holds.
const (
	sqliteBusy   = 5 // SQLITE_BUSY
	sqliteLocked = 6 // SQLITE_LOCKED
)
