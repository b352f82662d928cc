package tlspark

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// testClock is a clock the test moves.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// acceptAt is acceptOne with the listener's clock given.
func acceptAt(t *testing.T, cfg *tls.Config, now func() time.Time) (string, <-chan *tls.Conn) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, cfg)
	ln.(*listener).now = now
	t.Cleanup(func() { ln.Close() })
	ch := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(ch)
			return
		}
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			tc.Close()
			close(ch)
			return
		}
		ch <- tc
	}()
	return inner.Addr().String(), ch
}

// captured returns the traffic secrets a connection's log holds (shared, not copies, so
// the test can see them zeroed), or nils.
func captured(cc *countedConn) (client, server []byte) {
	cc.secrets.mu.Lock()
	defer cc.secrets.mu.Unlock()
	return cc.secrets.client, cc.secrets.server
}

func zeroed(b []byte) bool { return len(b) > 0 && bytes.Count(b, []byte{0}) == len(b) }

// TestParkedTLSConnCannotWrite: once parked, the tls.Conn (which still exists, with the
// same keys and an older sequence number) can neither write nor read, so it cannot send a
// record under a nonce the parked connection uses, and takes nothing the parked one should
// read. The client gets exactly what the parked connection sends.
func TestParkedTLSConnCannotWrite(t *testing.T) {
	p := newTestPKI(t)
	addr, conns := acceptOne(t, p.server)
	c, err := tls.Dial("tcp", addr, p.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := <-conns
	if tc == nil {
		t.Fatal("no connection accepted")
	}
	defer tc.NetConn().Close()
	pc, err := Park(tc)
	if err != nil {
		t.Fatalf("Park: %v", err)
	}
	if n, err := tc.Write([]byte("through crypto/tls")); err == nil || n != 0 {
		t.Fatalf("the parked connection's tls.Conn wrote %d bytes (%v), want an error", n, err)
	}
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := tc.Read(make([]byte, 10)); err == nil || n != 0 {
		t.Fatalf("the parked connection's tls.Conn read %d bytes (%v), want an error", n, err)
	}
	if got := readN(t, pc, 4); got != "ping" {
		t.Fatalf("the parked connection read %q, want ping", got)
	}
	if _, err := pc.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := readN(t, c, 4); got != "pong" { // a record of crypto/tls's would have come first, or broke this one
		t.Fatalf("the client read %q, want pong", got)
	}
	// Closing the tls.Conn closes the TCP connection under both, but its close_notify (a
	// record under a sequence number the parked side used) does not go out: the client
	// sees the connection end, not a record that does not authenticate.
	tc.Close()
	if rest, err := io.ReadAll(c); len(rest) != 0 || (err != nil && !errors.Is(err, io.ErrUnexpectedEOF)) {
		t.Fatalf("after the tls.Conn was closed the client read %q, %v; want the end of the connection", rest, err)
	}
}

// TestSecretsOfUnparkedConnections: a connection that is not parked within ParkWindow drops
// (and zeroes) its captured traffic secrets at its next read or write and stays on
// crypto/tls; so does every connection when it closes, and one Park refused.
func TestSecretsOfUnparkedConnections(t *testing.T) {
	p := newTestPKI(t)
	dial := func(t *testing.T, clock *testClock) (client, server *tls.Conn, cc *countedConn, cs, ss []byte) {
		t.Helper()
		addr, conns := acceptAt(t, p.server, clock.now)
		c, err := tls.Dial("tcp", addr, p.client)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		tc := <-conns
		if tc == nil {
			t.Fatal("no connection accepted")
		}
		t.Cleanup(func() { tc.NetConn().Close() })
		cc = tc.NetConn().(*countedConn)
		cs, ss = captured(cc)
		if len(cs) != 32 || len(ss) != 32 || zeroed(cs) || zeroed(ss) {
			t.Fatalf("after the handshake the log holds %d and %d bytes of secrets", len(cs), len(ss))
		}
		return c, tc, cc, cs, ss
	}
	expectDropped := func(t *testing.T, cc *countedConn, cs, ss []byte) {
		t.Helper()
		if c, s := captured(cc); c != nil || s != nil {
			t.Error("the log still holds traffic secrets")
		}
		if !zeroed(cs) || !zeroed(ss) {
			t.Error("the dropped traffic secrets were not zeroed")
		}
	}

	t.Run("kept alive past the window", func(t *testing.T) {
		clock := &testClock{t: time.Unix(1e9, 0)}
		c, tc, cc, cs, ss := dial(t, clock)
		clock.add(ParkWindow - time.Second)
		if _, err := tc.Write([]byte("one")); err != nil {
			t.Fatal(err)
		}
		if zeroed(cs) {
			t.Fatal("secrets dropped within the window")
		}
		clock.add(2 * time.Second)
		if _, err := tc.Write([]byte("two")); err != nil { // the next write after the window
			t.Fatal(err)
		}
		expectDropped(t, cc, cs, ss)
		if _, err := Park(tc); !errors.Is(err, ErrNotParkable) || !strings.Contains(err.Error(), "dropped") {
			t.Fatalf("Park after the window: %v, want ErrNotParkable saying the secrets were dropped", err)
		}
		if _, err := tc.Write([]byte("three")); err != nil { // still on crypto/tls
			t.Fatal(err)
		}
		if got := readN(t, c, 11); got != "onetwothree" {
			t.Fatalf("client read %q", got)
		}
	})
	t.Run("Park late without other traffic", func(t *testing.T) {
		clock := &testClock{t: time.Unix(1e9, 0)}
		_, tc, cc, cs, ss := dial(t, clock)
		clock.add(ParkWindow + time.Second)
		if _, err := Park(tc); !errors.Is(err, ErrNotParkable) {
			t.Fatalf("Park after the window: %v, want ErrNotParkable", err)
		}
		expectDropped(t, cc, cs, ss)
	})
	t.Run("closed", func(t *testing.T) {
		_, tc, cc, cs, ss := dial(t, &testClock{t: time.Unix(1e9, 0)})
		tc.Close()
		expectDropped(t, cc, cs, ss)
	})
	t.Run("Park refused", func(t *testing.T) {
		c, tc, cc, cs, ss := dial(t, &testClock{t: time.Unix(1e9, 0)})
		if _, err := io.WriteString(c, "early"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil { // crypto/tls now holds "arly"
			t.Fatal(err)
		}
		if _, err := Park(tc); !errors.Is(err, ErrPending) {
			t.Fatalf("Park: %v, want ErrPending", err)
		}
		expectDropped(t, cc, cs, ss)
	})
}

// TestParkedSecretsZeroed: a parked connection zeroes a traffic secret it replaces
// (KeyUpdate) and both directions' secrets and keys when it closes.
func TestParkedSecretsZeroed(t *testing.T) {
	s := suites[0]
	client, server := testPair(t, s)
	old := server.in.secret
	go func() {
		client.wmu.Lock()
		_ = client.writeRecord(recordTypeHandshake, []byte{typeKeyUpdate, 0, 0, 1, 0})
		client.out.update(s)
		client.wmu.Unlock()
		_, _ = client.Write([]byte("x"))
	}()
	if got := readN(t, server, 1); got != "x" {
		t.Fatalf("read %q after a KeyUpdate", got)
	}
	if !zeroed(old) {
		t.Error("the traffic secret a KeyUpdate replaced was not zeroed")
	}
	if zeroed(server.in.secret) {
		t.Fatal("the new traffic secret is zero")
	}
	go io.Copy(io.Discard, client) // takes the close_notify
	in, inKey, out, outKey := server.in.secret, server.in.key, server.out.secret, server.out.key
	server.Close()
	for name, b := range map[string][]byte{"read secret": in, "read key": inKey, "write secret": out, "write key": outKey} {
		if !zeroed(b) {
			t.Errorf("%s not zeroed by Close", name)
		}
	}
	if server.in.iv != [12]byte{} || server.out.iv != [12]byte{} {
		t.Error("IVs not zeroed by Close")
	}
	if _, err := server.Read(make([]byte, 1)); err == nil {
		t.Error("a closed connection reads")
	}
	if _, err := server.Write([]byte("y")); err == nil {
		t.Error("a closed connection writes")
	}
}

// TestClientFlightZeroesHandshakeSecret: the handshake follower zeroes the client
// handshake secret once it has derived its key, and takes it from the log.
func TestClientFlightZeroesHandshakeSecret(t *testing.T) {
	s := suites[0]
	secret := bytes.Repeat([]byte{3}, 32)
	var b bytes.Buffer
	w := &Conn{raw: streamConn{w: &b}, suite: s}
	w.out.setSecret(s, bytes.Clone(secret))
	w.wmu.Lock()
	_ = w.writeRecord(recordTypeHandshake, append([]byte{20, 0, 0, 32}, make([]byte, 32)...))
	w.wmu.Unlock()
	log := &secretLog{clientHandshake: bytes.Clone(secret)}
	held := log.clientHandshake
	var fl clientFlight
	fl.feed(b.Bytes(), log)
	if !fl.done || !fl.ok {
		t.Fatalf("flight not followed: done %v ok %v", fl.done, fl.ok)
	}
	if !zeroed(held) || log.clientHandshake != nil {
		t.Fatal("the client handshake secret is still held")
	}
	if fl.iv != [12]byte{} || fl.aead != nil {
		t.Fatal("the flight's handshake key is still held")
	}
}

// TestSecretLogAfterDrop: lines logged after the secrets were dropped are not kept.
func TestSecretLogAfterDrop(t *testing.T) {
	var log secretLog
	line := []byte("CLIENT_TRAFFIC_SECRET_0 00 " + strings.Repeat("ab", 32) + "\n")
	log.Write(line)
	if len(log.client) != 32 {
		t.Fatalf("secret not kept: %x", log.client)
	}
	kept := log.client
	log.drop()
	if !zeroed(kept) || log.client != nil {
		t.Fatal("drop left the secret")
	}
	log.Write(line)
	if log.client != nil {
		t.Fatal("a secret logged after drop was kept")
	}
}
