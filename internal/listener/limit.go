package listener

import (
	"net"
	"sync"
)

// LimitListener accepts at most n connections at once from l: Accept waits while n are
// open and goes on when one is closed. It behaves as golang.org/x/net/netutil's, which it
// replaces, except that its connections expose the accepted one through NetConn: a role
// that streams bulk data reaches the socket below TLS (syscall.Conn) to wait for room in
// the kernel's send buffer holding no buffer of its own (dp/content.go).
func LimitListener(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	sem       chan struct{}
	closeOnce sync.Once
	done      chan struct{} // closed by Close: a waiting Accept gives up
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		// Closed: the inner Accept fails at once. A listener that still hands out a
		// connection gets it closed, so its peer is not left hanging.
		for {
			c, err := l.Listener.Accept()
			if err != nil {
				return nil, err
			}
			_ = c.Close()
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// limitConn gives its slot back on its first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// NetConn returns the accepted connection (a *net.TCPConn for a TCP listener).
func (c *limitConn) NetConn() net.Conn { return c.Conn }
