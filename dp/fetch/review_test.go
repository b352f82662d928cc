package fetch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Security review: a hostile DP that answers every Range request with a 206 of one byte
// (each answer "brings bytes") must not keep Get asking it once per byte: it is abandoned
// after MaxResumes such answers in a row, and the next source completes the blob.
func TestTrickleSourceAbandoned(t *testing.T) {
	data, b := testBlob(t, 4*testChunk)
	var bad *server
	bad = serve(t, data, func(w http.ResponseWriter, r *http.Request) {
		if bad.requests.Load() > 64 {
			w.WriteHeader(http.StatusServiceUnavailable) // the test's own bound
			return
		}
		from := 0
		if rg := r.Header.Get("Range"); rg != "" {
			from, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, from, len(data)))
		w.Header().Set("Content-Length", "1")
		if from == 0 { // the first request has no Range: a whole answer cut after one byte
			w.Header().Del("Content-Range")
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:1])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[from : from+1])
	})
	good := serve(t, data, nil)
	c, _ := client(bad)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	res, err := Get(context.Background(), b, []Source{src("bad", bad), src("good", good)}, dst, Options{Client: c})
	if err != nil || res.Source != "good" {
		t.Fatalf("%+v %v", res, err)
	}
	if n := bad.requests.Load(); n > MaxResumes+2 {
		t.Fatalf("the trickling source was asked %d times", n)
	}
	mustFile(t, dst, data)
}

// Security review: a DP's redirect is not followed (the device's certificate would be
// presented, and a request made, wherever a hostile DP points it).
func TestRedirectNotFollowed(t *testing.T) {
	data, b := testBlob(t, 2*testChunk)
	elsewhere := serve(t, data, nil)
	redirector := serve(t, data, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	})
	c, _ := client(redirector)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	_, err := Get(context.Background(), b, []Source{src("redirector", redirector)}, dst, Options{Client: c})
	if !errors.Is(err, ErrStatus) {
		t.Fatalf("got %v, want ErrStatus", err)
	}
	if n := elsewhere.requests.Load(); n != 0 {
		t.Fatalf("the redirect was followed: %d requests elsewhere", n)
	}
	// The caller's client is left as it was.
	if c.CheckRedirect != nil {
		t.Fatal("Get changed the caller's client")
	}
}
