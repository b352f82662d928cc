//go:build !unix

package sitedb

import "errors"

type servingLock struct{}

// lockFile: site roles are served on Linux (and other Unix systems), where flock exists.
func lockFile(string) (*servingLock, error) {
	return nil, errors.New("serving site roles on a SQLite store needs flock (a Unix system)")
}

func (*servingLock) unlock() {}
