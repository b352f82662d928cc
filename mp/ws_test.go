package mp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/tlspark"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// rawConn opens a TLS connection to the intranet listener presenting cert.
func (f *fixture) rawConn(t testing.TB, cert tls.Certificate) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := tls.Dial("tcp", strings.TrimPrefix(f.intranet, "https://"), &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

const validKey = "dGhlIHNhbXBsZSBub25jZQ=="

func upgradeRequest(extra string) string {
	return "GET /v1/notify HTTP/1.1\r\nHost: mp\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + validKey + "\r\n" + extra + "\r\n"
}

// rawUpgrade opens a channel by hand and returns the connection right after the 101.
func (f *fixture) rawUpgrade(t testing.TB, cert tls.Certificate) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, br := f.rawConn(t, cert)
	if _, err := io.WriteString(c, upgradeRequest("")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("upgrade answered %d %v", resp.StatusCode, resp.Header)
	}
	waitConnected(t, f.mp, deviceID(cert), 1)
	return c, br
}

// clientFrame is a frame as a device sends it.
func clientFrame(b0 byte, masked bool, payload []byte, length ...uint64) []byte {
	n := uint64(len(payload))
	if len(length) > 0 {
		n = length[0]
	}
	var mbit byte
	if masked {
		mbit = 0x80
	}
	var out []byte
	switch {
	case n <= 125:
		out = []byte{b0, mbit | byte(n)}
	case n <= 0xFFFF:
		out = binary.BigEndian.AppendUint16([]byte{b0, mbit | 126}, uint16(n))
	default:
		out = binary.BigEndian.AppendUint64([]byte{b0, mbit | 127}, n)
	}
	if !masked {
		return append(out, payload...)
	}
	mask := []byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, mask...)
	for i, b := range payload {
		out = append(out, b^mask[i&3])
	}
	return out
}

// serverFrame reads one frame as the device receives it: unmasked, unfragmented.
func serverFrame(br *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0xF0 != 0x80 || h[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame fragmented, with reserved bits or masked")
	}
	n := int(h[1] & 0x7F)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		return 0, nil, errors.New("unexpected 64-bit length")
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(br, payload)
	return h[0] & 0x0F, payload, err
}

// expectClose reads until the server's close frame, checks its code, then expects the end
// of the connection.
func expectClose(t *testing.T, br *bufio.Reader, code uint16) {
	t.Helper()
	for {
		op, p, err := serverFrame(br)
		if err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		if op == opPing {
			continue
		}
		if op != opClose || len(p) < 2 || binary.BigEndian.Uint16(p) != code {
			t.Fatalf("got op %#x %q, want a close with code %d", op, p, code)
		}
		break
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the close frame: %v, want EOF", err)
	}
}

func TestNotifyUpgradeRefused(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	drop := func(req, header string) string {
		return strings.Replace(req, header+"\r\n", "", 1)
	}
	valid := upgradeRequest("")
	cases := []struct {
		name    string
		req     string
		status  int
		code    string
		header  string // a header the answer must carry
		noReuse bool   // the connection is not kept alive (HTTP/1.0)
	}{
		{"HEAD", strings.Replace(valid, "GET", "HEAD", 1), 405, "method_not_allowed", "Allow", false},
		{"HTTP/1.0", strings.Replace(valid, "HTTP/1.1", "HTTP/1.0", 1), 505, "http_version", "", true},
		{"no Connection", drop(valid, "Connection: Upgrade"), 426, "upgrade_required", "Upgrade", false},
		{"Connection keep-alive", strings.Replace(valid, "Connection: Upgrade", "Connection: keep-alive", 1), 426, "upgrade_required", "Upgrade", false},
		{"no Upgrade", drop(valid, "Upgrade: websocket"), 426, "upgrade_required", "Upgrade", false},
		{"Upgrade h2c", strings.Replace(valid, "Upgrade: websocket", "Upgrade: h2c", 1), 426, "upgrade_required", "Upgrade", false},
		{"no version", drop(valid, "Sec-WebSocket-Version: 13"), 426, "websocket_version", "Sec-WebSocket-Version", false},
		{"version 8", strings.Replace(valid, "Version: 13", "Version: 8", 1), 426, "websocket_version", "Sec-WebSocket-Version", false},
		{"no key", drop(valid, "Sec-WebSocket-Key: "+validKey), 400, "bad_request", "", false},
		{"key not base64", strings.Replace(valid, validKey, "not base64!", 1), 400, "bad_request", "", false},
		{"key of 8 bytes", strings.Replace(valid, validKey, "AAAAAAAAAAA=", 1), 400, "bad_request", "", false},
		{"two keys", upgradeRequest("Sec-WebSocket-Key: " + validKey + "\r\n"), 400, "bad_request", "", false},
		{"cross-origin", upgradeRequest("Origin: https://evil.example\r\n"), 403, "origin_refused", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, br := f.rawConn(t, pc)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, &http.Request{Method: strings.Fields(tc.req)[0]})
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("answered %d %q %s, want %d JSON", resp.StatusCode, resp.Header.Get("Content-Type"), body, tc.status)
			}
			if tc.header != "" && resp.Header.Get(tc.header) == "" {
				t.Errorf("no %s header: %v", tc.header, resp.Header)
			}
			if len(body) > 0 {
				var e wire.Error
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != tc.code {
					t.Errorf("body %s, want code %q", body, tc.code)
				}
			}
			if f.mp.hub.nNotify.Load() != 0 {
				t.Error("a refused upgrade left a channel")
			}
			if tc.noReuse {
				return
			}
			// not hijacked: the connection still serves requests
			if _, err := io.WriteString(c, "GET /v1/whoami HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err = http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("next request on the connection: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}

	t.Run("bytes before the 101", func(t *testing.T) {
		c, br := f.rawConn(t, pc)
		if _, err := c.Write(append([]byte(upgradeRequest("")), clientFrame(0x89, true, nil)...)); err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(br); err != nil || len(b) != 0 {
			t.Fatalf("a client that did not wait for the 101 got %q (%v), want the connection closed", b, err)
		}
	})
}

func TestNotifyFrames(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	refused := []struct {
		name  string
		frame []byte
		code  uint16
	}{
		{"unmasked text", clientFrame(0x81, false, []byte("hi")), closeProtocolError},
		{"unmasked ping", clientFrame(0x89, false, nil), closeProtocolError},
		{"text", clientFrame(0x81, true, []byte(`{"type":"hello"}`)), closePolicyViolation},
		{"binary", clientFrame(0x82, true, []byte{1, 2, 3}), closePolicyViolation},
		{"continuation", clientFrame(0x80, true, []byte("x")), closePolicyViolation},
		{"oversized binary", clientFrame(0x82, true, bytes.Repeat([]byte("a"), 2000)), closeTooBig},
		{"oversized length, no payload", clientFrame(0x82, true, nil, 1<<40), closeTooBig},
		{"ping of 126 bytes", clientFrame(0x89, true, bytes.Repeat([]byte("p"), 126)), closeProtocolError},
		{"fragmented ping", clientFrame(0x09, true, nil), closeProtocolError},
		{"reserved bit", clientFrame(0xC9, true, nil), closeProtocolError},
		{"unknown opcode", clientFrame(0x83, true, nil), closeProtocolError},
		{"close with 1 byte", clientFrame(0x88, true, []byte{3}), closeProtocolError},
		{"close with code 1005", clientFrame(0x88, true, []byte{0x03, 0xED}), closeProtocolError},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			c, br := f.rawUpgrade(t, pc)
			if _, err := c.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			expectClose(t, br, tc.code)
			c.Close()
			waitConnected(t, f.mp, deviceID(pc), 0)
		})
	}

	t.Run("ping is answered with its payload", func(t *testing.T) {
		c, br := f.rawUpgrade(t, pc)
		for _, payload := range []string{"", "abc", strings.Repeat("z", 125)} {
			if _, err := c.Write(clientFrame(0x89, true, []byte(payload))); err != nil {
				t.Fatal(err)
			}
			op, p, err := serverFrame(br)
			if err != nil || op != opPong || string(p) != payload {
				t.Fatalf("ping %q answered op %#x %q %v", payload, op, p, err)
			}
		}
		// a pong the server did not ask for is fine
		if _, err := c.Write(clientFrame(0x8A, true, []byte("unasked"))); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(clientFrame(0x88, true, closePayload(closeNormal, "bye"))); err != nil {
			t.Fatal(err)
		}
		expectClose(t, br, closeNormal)
		waitConnected(t, f.mp, deviceID(pc), 0)
	})

	t.Run("client close (websocket library)", func(t *testing.T) {
		ws := dialNotify(t, f, &pc)
		waitConnected(t, f.mp, deviceID(pc), 1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		readCtx := ws.CloseRead(ctx)
		if err := ws.Ping(ctx); err != nil {
			t.Fatalf("ping: %v", err)
		}
		if err := ws.Close(websocket.StatusNormalClosure, "going"); err != nil {
			t.Fatalf("close: %v", err)
		}
		<-readCtx.Done()
		waitConnected(t, f.mp, deviceID(pc), 0)
		if f.mp.hub.nNotify.Load() != 0 {
			t.Error("the hub still counts the channel")
		}
	})

	t.Run("event, then block closes with 1008", func(t *testing.T) {
		dev := f.device(t, "pc-2")
		ws := dialNotify(t, f, &dev)
		waitConnected(t, f.mp, deviceID(dev), 1)
		big := strings.Repeat("x", 70000) // 64-bit length frame
		if err := f.mp.Push(context.Background(), deviceID(dev), wire.Event{Type: wire.EventRenewCert, Data: map[string]string{"pad": big}}); err != nil {
			t.Fatal(err)
		}
		ws.SetReadLimit(1 << 20)
		if ev := nextEvent(t, ws); ev.Type != wire.EventRenewCert || ev.Data["pad"] != big {
			t.Fatalf("event %+v", ev.Type)
		}
		if _, err := f.mp.Block(context.Background(), deviceID(dev), true); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, _, err := ws.Read(ctx)
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "device blocked" {
			t.Fatalf("after the block: %v, want close 1008 \"device blocked\"", err)
		}
		waitConnected(t, f.mp, deviceID(dev), 0)
	})
}

func TestNotifyPingTimeout(t *testing.T) {
	const interval = 100 * time.Millisecond
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{PingInterval: interval})
	quiet, lively := f.device(t, "quiet"), f.device(t, "lively")

	// a device that reads (and so answers pings) keeps its channel
	ws := dialNotify(t, f, &lively)
	ctx := ws.CloseRead(context.Background())

	_, br := f.rawUpgrade(t, quiet)
	start := time.Now()
	pings := 0
	for {
		op, _, err := serverFrame(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		if op != opPing {
			t.Fatalf("op %#x, want pings", op)
		}
		pings++
	}
	took := time.Since(start)
	if took < 3*interval/2 || took > 10*interval || pings < 1 { // the clock started just after the upgrade
		t.Errorf("a device that never answers was cut after %v and %d pings, want about 2 intervals of %v", took, pings, interval)
	}
	waitConnected(t, f.mp, deviceID(quiet), 0)

	time.Sleep(5 * interval)
	if ctx.Err() != nil {
		t.Fatal("the channel of a device that answers pings was closed")
	}
	waitConnected(t, f.mp, deviceID(lively), 1)
}

// FuzzFrames feeds arbitrary bytes to the channel's reader as a device would send them
// after the upgrade: it must end (no panic), answer only with well-formed server frames,
// and stop within a deadline once the device stops sending.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{})
	f.Add(clientFrame(0x89, true, []byte("ping")))
	f.Add(clientFrame(0x8A, true, nil))
	f.Add(clientFrame(0x88, true, closePayload(closeNormal, "bye")))
	f.Add(clientFrame(0x88, true, []byte{0x03, 0xE8, 0xFF}))
	f.Add(clientFrame(0x81, false, []byte("x")))
	f.Add(clientFrame(0x81, true, []byte("x")))
	f.Add(clientFrame(0x82, true, nil, 1<<63))
	f.Add(clientFrame(0x89, true, bytes.Repeat([]byte("p"), 125)))
	f.Add(append(clientFrame(0x89, true, nil), clientFrame(0x89, true, []byte{1})[:5]...))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		// a real socket, so the reader waits in the network poller as it does in service
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		nc := &notifyConn{conn: server, interval: time.Hour}
		done := make(chan struct{})
		go func() { defer close(done); nc.converse() }()
		go func() { // the device sends, then stops sending
			_, _ = client.Write(data)
			_ = client.(*net.TCPConn).CloseWrite()
		}()
		answers := make(chan error, 1)
		go func() {
			br := bufio.NewReader(client)
			for {
				op, p, err := serverFrame(br)
				if err != nil {
					if err == io.EOF || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
						err = nil
					}
					answers <- err
					return
				}
				if (op != opPong && op != opClose) || len(p) > wsMaxControl {
					answers <- errors.New("unexpected server frame")
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the frame reader did not stop after the device stopped sending")
		}
		if err := <-answers; err != nil {
			t.Fatal(err)
		}
	})
}

// TestNotifyChannelParked checks that a TLS 1.3 channel leaves crypto/tls once upgraded
// (internal/tlspark, what keeps an idle channel small) and still carries pings, events and
// the close, and that a TLS 1.2 channel works on crypto/tls.
func TestNotifyChannelParked(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	for _, tc := range []struct {
		name    string
		version uint16
		parked  bool
	}{
		{"TLS 1.3 is parked", tls.VersionTLS13, true},
		{"TLS 1.2 stays on crypto/tls", tls.VersionTLS12, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", strings.TrimPrefix(f.intranet, "https://"), &tls.Config{RootCAs: f.roots, Certificates: []tls.Certificate{pc}, MaxVersion: tc.version})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			// a request first on the same connection: the channel need not be its first use
			if _, err := io.WriteString(c, "GET /v1/whoami HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("whoami: %v %v", resp, err)
			}
			io.Copy(io.Discard, resp.Body)
			if _, err := io.WriteString(c, upgradeRequest("")); err != nil {
				t.Fatal(err)
			}
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			waitConnected(t, f.mp, deviceID(pc), 1)
			f.mp.hub.mu.Lock()
			var nc *notifyConn
			for nc = range f.mp.hub.notify[deviceID(pc)] {
			}
			f.mp.hub.mu.Unlock()
			if _, parked := nc.conn.(*tlspark.Conn); parked != tc.parked {
				t.Fatalf("channel on %T, parked %v, want %v", nc.conn, parked, tc.parked)
			}
			if _, err := c.Write(clientFrame(0x89, true, []byte("are you there"))); err != nil {
				t.Fatal(err)
			}
			if op, p, err := serverFrame(br); err != nil || op != opPong || string(p) != "are you there" {
				t.Fatalf("ping answered op %#x %q %v", op, p, err)
			}
			if err := f.mp.Push(context.Background(), deviceID(pc), wire.Event{Type: wire.EventPolicyChanged}); err != nil {
				t.Fatal(err)
			}
			if op, p, err := serverFrame(br); err != nil || op != opText || !strings.Contains(string(p), wire.EventPolicyChanged) {
				t.Fatalf("event arrived as op %#x %q %v", op, p, err)
			}
			if _, err := c.Write(clientFrame(0x88, true, closePayload(closeNormal, "bye"))); err != nil {
				t.Fatal(err)
			}
			expectClose(t, br, closeNormal)
			waitConnected(t, f.mp, deviceID(pc), 0)
		})
	}
}
