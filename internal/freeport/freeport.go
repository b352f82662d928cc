// Package freeport owns picking loopback ports for the servers tests and benchmarks start
// (PostgreSQL, BIND, the site's listeners) when the port must be known before the server
// runs. It picks below Linux's ephemeral range (32768-60999): a port the kernel handed out
// as :0 and released can be given again to any outgoing connection before the server binds
// it, which made tests fail with "address already in use".
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
)

// Range of the ports picked.
const (
	low  = 20000
	high = 32000
)

// Pick returns a port free on 127.0.0.1 for both TCP and UDP right now.
func Pick() (int, error) {
	for range 200 {
		port := low + rand.IntN(high-low)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		_ = l.Close()
		if err != nil {
			continue
		}
		_ = pc.Close()
		return port, nil
	}
	return 0, errors.New("no free port on 127.0.0.1 between 20000 and 32000")
}

// Addr returns "127.0.0.1:PORT" for a port from Pick.
func Addr() (string, error) {
	p, err := Pick()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}
