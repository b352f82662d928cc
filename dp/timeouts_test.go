package dp

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/listener"
)

// TestBulkTimeouts: a download that takes longer than the write timeout is not cut while
// the client reads; a client that stops reading is cut after it.
func TestBulkTimeouts(t *testing.T) {
	saved := listener.SlowClient
	t.Cleanup(func() { listener.SlowClient = saved })
	listener.SlowClient.Write, listener.SlowClient.Read = 250*time.Millisecond, 250*time.Millisecond
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	data := testData(16 << 20)
	sum := blob(t, r, data)
	dev := p.client(t, "device")

	get := func(t *testing.T) (*http.Response, func()) {
		t.Helper()
		c := dialDP(t, p, dev, r.urls["dp-intranet"])
		fmt.Fprintf(c, "GET /v1/content/%s HTTP/1.1\r\nHost: dp\r\n\r\n", sum)
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET: %v %v", resp, err)
		}
		return resp, func() { c.Close() }
	}
	t.Run("a steady reader finishes", func(t *testing.T) {
		resp, done := get(t)
		defer done()
		start := time.Now()
		buf := make([]byte, 1<<20)
		var n int64
		for {
			k, err := io.ReadFull(resp.Body, buf)
			n += int64(k)
			if err != nil {
				break
			}
			time.Sleep(40 * time.Millisecond) // the client's pace, not synchronisation
		}
		if n != int64(len(data)) {
			t.Fatalf("read %d of %d bytes in %s", n, len(data), time.Since(start))
		}
		if time.Since(start) < listener.SlowClient.Write {
			t.Fatalf("the download took %s: it proves nothing", time.Since(start))
		}
	})
	t.Run("a stalled reader is cut", func(t *testing.T) {
		resp, done := get(t)
		defer done()
		time.Sleep(2 * time.Second) // stall far beyond the write timeout
		n, _ := io.Copy(io.Discard, resp.Body)
		if n == int64(len(data)) {
			t.Fatal("the stalled client got the whole blob")
		}
	})
}
