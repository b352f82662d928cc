package fetch

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Security review: a hostile DP that drips one byte just inside the stall timeout (here
// every 100 ms against 300 ms) re-armed the watchdog forever: one answer of a 256 KiB blob
// would have held Get for seven hours. A source that brings less than MinStallBytes per
// StallTimeout of waiting is abandoned as stalled and the next one completes the blob.
func TestDripSourceAbandoned(t *testing.T) {
	data, b := testBlob(t, 4*testChunk)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	drip := serve(t, data, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		for i := range data {
			w.Write(data[i : i+1])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	good := serve(t, data, nil)
	c, _ := client(drip)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dst := filepath.Join(t.TempDir(), b.SHA256)
	res, err := Get(ctx, b, []Source{src("drip", drip), src("good", good)}, dst, Options{Client: c, StallTimeout: 300 * time.Millisecond})
	if err != nil || res.Source != "good" {
		t.Fatalf("%+v %v", res, err)
	}
	mustFile(t, dst, data)

	_, err = Get(ctx, b, []Source{src("drip", drip)}, filepath.Join(t.TempDir(), "x"), Options{Client: c, StallTimeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrStall) {
		t.Fatalf("a dripping source alone: %v", err)
	}
}
