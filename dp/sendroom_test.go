//go:build linux

package dp

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/listener"
)

// TestWaitForRoom: a download to a client that stops reading waits for room in the socket
// holding no piece; once the client reads again it is served to the end (the freed space
// wakes the wait: poll(2) armed the edge), and a client that never reads again is cut by
// the write deadline (once a whole deadline passed without an acknowledged byte).
func TestWaitForRoom(t *testing.T) {
	saved := listener.SlowClient
	waiting := make(chan struct{}, 1)
	t.Cleanup(func() { listener.SlowClient, testHookWait = saved, nil })
	listener.SlowClient.Write = time.Second
	testHookWait = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	data := testData(8 << 20)
	sum := blob(t, r, data)
	dev := p.client(t, "device")

	// get opens a download on a socket with a 16 KiB receive buffer and reads its headers.
	get := func(t *testing.T) (*http.Response, net.Conn) {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AddCert(p.root)
		d := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
			if err != nil {
				return err
			}
			return serr
		}}
		c, err := (&tls.Dialer{NetDialer: d, Config: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{dev.pair}, NextProtos: []string{"http/1.1"}}}).
			DialContext(context.Background(), "tcp", strings.TrimPrefix(r.urls["dp-intranet"], "https://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /v1/content/%s HTTP/1.1\r\nHost: dp\r\n\r\n", sum)
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4096), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET: %v %v", resp, err)
		}
		return resp, c
	}
	waitForRoom := func(t *testing.T) {
		t.Helper()
		select {
		case <-waiting:
		case <-time.After(10 * time.Second):
			t.Fatal("the DP never waited for room in the socket of a client that stopped reading")
		}
		if n := piecesHeld.Load(); n != 0 {
			t.Fatalf("%d pieces held while the only download waits for room", n)
		}
	}

	t.Run("a client that reads again after a pause is served to the end", func(t *testing.T) {
		for len(waiting) > 0 {
			<-waiting
		}
		resp, _ := get(t)
		waitForRoom(t)
		time.Sleep(500 * time.Millisecond) // the pause, within the write deadline: not synchronisation
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || n != int64(len(data)) || hex.EncodeToString(h.Sum(nil)) != sum {
			t.Fatalf("read %d of %d bytes (%v), hash match %v", n, len(data), err, hex.EncodeToString(h.Sum(nil)) == sum)
		}
	})
	t.Run("a client that never reads again is cut by the write deadline", func(t *testing.T) {
		for len(waiting) > 0 {
			<-waiting
		}
		resp, c := get(t)
		waitForRoom(t)
		start := time.Now()
		// Stall past the deadline: not synchronisation. The bytes in flight when the wait
		// began are acknowledged during the first deadline, which moves it along once.
		time.Sleep(2*listener.SlowClient.Write + 500*time.Millisecond)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, resp.Body)
		if n >= int64(len(data)) || err == nil && n == int64(len(data)) {
			t.Fatalf("the stalled client got %d of %d bytes", n, len(data))
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the DP did not close the stalled download within %s (read %d bytes): %v", time.Since(start), n, err)
		}
	})
}
