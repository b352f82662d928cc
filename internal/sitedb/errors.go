package sitedb

import (
	"errors"

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
