//go:build !linux

package location

import (
	"context"
	"errors"
)

// ErrNoNetlink is what WatchNetwork returns where netlink does not exist.
var ErrNoNetlink = errors.New("watching addresses and routes needs Linux netlink")

// WatchNetwork is only implemented on Linux; elsewhere it returns ErrNoNetlink and
// callers rely on their timer.
func WatchNetwork(ctx context.Context, fn func()) error { return ErrNoNetlink }
