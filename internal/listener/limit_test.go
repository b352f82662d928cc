package listener

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// LimitListener holds n connections at once, takes the next once one is closed (twice
// closing frees one slot), exposes the TCP connection through NetConn, and a closed
// listener's Accept returns at once.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, 2)
	accepted := make(chan net.Conn, 4)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	next := func(what string) net.Conn {
		select {
		case c := <-accepted:
			return c
		case <-time.After(5 * time.Second):
			t.Fatalf("%s was not accepted", what)
			return nil
		}
	}
	dial()
	dial()
	first, second := next("the first connection"), next("the second connection")
	if _, ok := first.(interface{ NetConn() net.Conn }).NetConn().(syscall.Conn); !ok {
		t.Fatalf("NetConn of %T is not a syscall.Conn", first)
	}
	dial()
	select {
	case c := <-accepted:
		t.Fatalf("a third connection was accepted while two are open: %v", c.RemoteAddr())
	case <-time.After(200 * time.Millisecond): // proving a negative: how long it was given
	}
	first.Close()
	first.Close() // a second Close frees no second slot
	third := next("the third connection, once the first was closed")
	dial()
	select {
	case c := <-accepted:
		t.Fatalf("a fourth connection was accepted while two are open: %v", c.RemoteAddr())
	case <-time.After(200 * time.Millisecond):
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-acceptErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	second.Close()
	third.Close()
}
