package sitedb

import (
	"errors"
	"fmt"
	"sync"
)

// ErrServedElsewhere means another process already serves site roles on this SQLite
// store: SQLite carries events only within one process, so the two would miss each other's.
var ErrServedElsewhere = errors.New("another process already serves site roles on this SQLite store")

// servingError is ErrServedElsewhere with what the operator needs to act on it.
type servingError struct {
	pid  int // 0 when the holder has not written it yet
	path string
}

func (e *servingError) Error() string {
	who := "another process"
	if e.pid > 0 {
		who = fmt.Sprintf("another process (pid %d)", e.pid)
	}
	return fmt.Sprintf("%s already serves site roles on the SQLite store %s, and SQLite carries events "+
		"(revocations, blocks, policy changes, session requests) only within one process: "+
		`run every role in one "ibcm site up", or put the site on PostgreSQL (ibcm site init --store postgres) `+
		"to run roles in separate processes", who, e.path)
}

func (e *servingError) Unwrap() error { return ErrServedElsewhere }

// ServingLockSuffix names the lock file beside a SQLite store: site.db.roles.lock.
const ServingLockSuffix = ".roles.lock"

// LockServing makes this process the one that serves site roles on db's SQLite file until
// release is called (call it before db.Close). Events (Notify, Listen) on SQLite reach
// only the process that sent them, so a second process serving on the same file would
// miss every revocation, block and policy change of the first: its LockServing fails with
// ErrServedElsewhere, which says what to do. Every DB of one process on one file shares
// the lock, as they share events.
//
// The lock is an exclusive flock on <file>.roles.lock (0600, holding the pid of its
// holder). The kernel drops it when the process ends, however it ends, so it is never
// stale; the file stays. On PostgreSQL, where LISTEN/NOTIFY reaches every process,
// LockServing does nothing.
func (db *DB) LockServing() (release func(), err error) {
	if db.driver != SQLite {
		return func() {}, nil
	}
	h := db.hub
	hubsMu.Lock()
	defer hubsMu.Unlock()
	if h.serving == 0 {
		l, err := lockFile(h.path + ServingLockSuffix)
		if err != nil {
			var se *servingError
			if errors.As(err, &se) {
				se.path = h.path
			}
			return nil, err
		}
		h.lock = l
	}
	h.serving++
	return sync.OnceFunc(func() {
		hubsMu.Lock()
		defer hubsMu.Unlock()
		if h.serving--; h.serving == 0 {
			h.lock.unlock()
			h.lock = nil
		}
	}), nil
}
