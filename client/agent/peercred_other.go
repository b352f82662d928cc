//go:build !linux

package agent

import (
	"errors"
	"net"
	"runtime"
)

// peerOf fails closed where the kernel's peer credentials are not read: the control socket
// then refuses every connection.
func peerOf(net.Conn) (peer, error) {
	return peer{}, errors.New("peer credentials are not supported on " + runtime.GOOS)
}
