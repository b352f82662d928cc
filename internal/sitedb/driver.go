package sitedb

import "fmt"

// Driver names a database backend.
type Driver string

// The supported backends.
const (
	SQLite   Driver = "sqlite"
	Postgres Driver = "postgres"
)

// ParseDriver returns the Driver named s ("sqlite" or "postgres").
func ParseDriver(s string) (Driver, error) {
	switch d := Driver(s); d {
	case SQLite, Postgres:
		return d, nil
	default:
		return "", fmt.Errorf("unknown database driver %q: must be %q or %q", s, SQLite, Postgres)
	}
}
