package fetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

const testChunk = 64 << 10

// testBlob is random content of size n in chunks of testChunk.
func testBlob(t *testing.T, n int) ([]byte, Blob) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	return data, blobFor(data, testChunk)
}

func blobFor(data []byte, chunk int64) Blob {
	b := Blob{SHA256: hexsum(data), Size: int64(len(data)), ChunkSize: chunk}
	for off := int64(0); off < b.Size; off += chunk {
		b.Chunks = append(b.Chunks, hexsum(data[off:min(off+chunk, b.Size)]))
	}
	return b
}

func hexsum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// server is a DP serving one blob over TLS, counting the body bytes it wrote.
type server struct {
	*httptest.Server
	written  atomic.Int64
	requests atomic.Int64
	ranges   chan string // the Range header of each request, when not nil
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

func (w countingWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

// serve starts a server; h gets a counting writer. A nil h serves data properly (Range,
// If-Range with the ETag).
func serve(t *testing.T, data []byte, h func(w http.ResponseWriter, r *http.Request)) *server {
	t.Helper()
	s := &server{}
	sum := hexsum(data)
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"`+sum+`"`)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
		}
	}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if r.URL.Path != "/v1/content/"+sum {
			http.Error(w, `{"error":{"code":"not_found","message":"no such blob"}}`, http.StatusNotFound)
			return
		}
		if s.ranges != nil {
			select {
			case s.ranges <- r.Header.Get("Range"):
			default:
			}
		}
		h(countingWriter{w, &s.written}, r)
	}))
	s.Config.ErrorLog = nil
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// countingTransport counts the body bytes the client read, per host.
type countingTransport struct {
	base http.RoundTripper
	mu   sync.Mutex
	read map[string]int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, add: func(n int) {
		c.mu.Lock()
		c.read[r.URL.Host] += int64(n)
		c.mu.Unlock()
	}}
	return resp, nil
}

func (c *countingTransport) bytes(s *server) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read[strings.TrimPrefix(s.URL, "https://")]
}

type countingBody struct {
	io.ReadCloser
	add func(int)
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.add(n)
	return n, err
}

// client trusts the httptest certificate (the same for every httptest server) and counts.
func client(s *server) (*http.Client, *countingTransport) {
	ct := &countingTransport{base: s.Client().Transport, read: map[string]int64{}}
	return &http.Client{Transport: ct}, ct
}

func src(name string, s *server) Source { return Source{Name: name, URL: s.URL} }

func mustFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes, not the blob (%d bytes)", path, len(got), len(want))
	}
	if _, err := os.Stat(path + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s.part left behind: %v", path, err)
	}
}

func TestGetWhole(t *testing.T) {
	data, b := testBlob(t, 10*testChunk+1234)
	s := serve(t, data, nil)
	c, _ := client(s)
	dst := filepath.Join(t.TempDir(), "ab", "cd", b.SHA256)
	var last, calls int64
	res, err := Get(context.Background(), b, []Source{src("a", s)}, dst, Options{Client: c, Progress: func(have, total int64) {
		if total != b.Size || have < last {
			t.Errorf("progress %d/%d after %d", have, total, last)
		}
		last = have
		calls++
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Source: "a", Received: b.Size}) {
		t.Fatalf("result %+v", res)
	}
	if last != b.Size || calls < 2 {
		t.Fatalf("progress ended at %d after %d calls", last, calls)
	}
	mustFile(t, dst, data)

	// Already there: nothing asked.
	before := s.requests.Load()
	res, err = Get(context.Background(), b, []Source{src("a", s)}, dst, Options{Client: c})
	if err != nil || res.Resumed != b.Size || res.Received != 0 || s.requests.Load() != before {
		t.Fatalf("second Get: %+v %v, %d requests", res, err, s.requests.Load()-before)
	}
}

func TestGetEmptyBlob(t *testing.T) {
	b := blobFor(nil, testChunk)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	res, err := Get(context.Background(), b, nil, dst, Options{})
	if err != nil || res != (Result{}) {
		t.Fatalf("%+v %v", res, err)
	}
	mustFile(t, dst, nil)
}

// cutServer cuts the connection halfway through the answers for which cut says so.
func cutServer(t *testing.T, data []byte, cut func(n int64) bool) *server {
	var s *server
	s = serve(t, data, func(w http.ResponseWriter, r *http.Request) {
		if !cut(s.requests.Load()) {
			w.Header().Set("ETag", `"`+hexsum(data)+`"`)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
			return
		}
		from := 0
		if rg := r.Header.Get("Range"); rg != "" {
			from, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(data)-1, len(data)))
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-from))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		}
		w.Write(data[from : from+(len(data)-from)/2+12345]) // inside a chunk
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drop the connection
	})
	return s
}

// A connection cut halfway: Get asks again for the rest only, and the server sends only the
// missing bytes.
func TestResumeAfterCut(t *testing.T) {
	data, b := testBlob(t, 16*testChunk+777)
	s := cutServer(t, data, func(n int64) bool { return n == 1 })
	s.ranges = make(chan string, 2)
	c, _ := client(s)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	res, err := Get(context.Background(), b, []Source{src("s", s)}, dst, Options{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if rg := <-s.ranges; rg != "" {
		t.Fatalf("first Range %q", rg)
	}
	rg := <-s.ranges
	kept, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
	if err != nil || kept <= 0 || kept >= b.Size {
		t.Fatalf("second Range %q", rg)
	}
	if res.Source != "s" || res.Resumed != 0 || res.Received != b.Size {
		t.Fatalf("result %+v", res)
	}
	// The server's second answer carried exactly the bytes missing after the cut.
	firstAnswer := int64(len(data)/2 + 12345)
	if second := s.written.Load() - firstAnswer; second != b.Size-kept {
		t.Fatalf("second answer: %d bytes; held %d of %d after the cut", second, kept, b.Size)
	}
	mustFile(t, dst, data)
}

// A source that cuts every answer: Get gives up after MaxResumes, keeps what it verified,
// and the next Get resumes from there, the server sending only what was missing.
func TestResumeAcrossGets(t *testing.T) {
	data, b := testBlob(t, 16*testChunk+777)
	cutter := cutServer(t, data, func(int64) bool { return true })
	c, _ := client(cutter)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	_, err := Get(context.Background(), b, []Source{src("cutter", cutter)}, dst, Options{Client: c})
	var fe *Error
	if !errors.As(err, &fe) || len(fe.Tried) != 1 || fe.Tried[0].Source != "cutter" || !errors.Is(err, ErrShort) {
		t.Fatalf("cut download: %v", err)
	}
	if n := cutter.requests.Load(); n != 1+MaxResumes {
		t.Fatalf("%d requests to the cutter", n)
	}
	fi, err := os.Stat(dst + ".part")
	if err != nil || fi.Size() == 0 || fi.Size() >= b.Size {
		t.Fatalf(".part after the cuts: %v %v", fi, err)
	}
	kept := fi.Size()

	good := serve(t, data, nil)
	good.ranges = make(chan string, 1)
	res, err := Get(context.Background(), b, []Source{src("good", good)}, dst, Options{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if rg := <-good.ranges; rg != "bytes="+strconv.FormatInt(kept, 10)+"-" {
		t.Fatalf("Range %q, held %d", rg, kept)
	}
	if res.Resumed != kept || res.Received != b.Size-kept || good.written.Load() != b.Size-kept {
		t.Fatalf("resumed %d received %d, server wrote %d; held %d of %d", res.Resumed, res.Received, good.written.Load(), kept, b.Size)
	}
	mustFile(t, dst, data)
}

// A flipped byte on A: A is read no further than the end of the bad chunk, B completes
// from the start of that chunk.
func TestFlippedByteStopsAtChunk(t *testing.T) {
	data, b := testBlob(t, 20*testChunk+99)
	flip := 5*testChunk + 4321
	bad := bytes.Clone(data)
	bad[flip] ^= 0x40
	a := serve(t, data, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"`+b.SHA256+`"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(bad))
	})
	bsrv := serve(t, data, nil)
	bsrv.ranges = make(chan string, 1)
	c, ct := client(a)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	res, err := Get(context.Background(), b, []Source{src("a", a), src("b", bsrv)}, dst, Options{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	chunkOf := int64(flip / testChunk)
	if got := ct.bytes(a); got > (chunkOf+1)*testChunk {
		t.Fatalf("read %d bytes from A; the bad chunk %d ends at %d", got, chunkOf, (chunkOf+1)*testChunk)
	}
	if rg := <-bsrv.ranges; rg != fmt.Sprintf("bytes=%d-", chunkOf*testChunk) {
		t.Fatalf("B asked for %q", rg)
	}
	if res.Source != "b" || ct.bytes(bsrv) != b.Size-chunkOf*testChunk {
		t.Fatalf("result %+v, read %d from B", res, ct.bytes(bsrv))
	}
	mustFile(t, dst, data)

	// A alone: the error says chunk, and the verified prefix stays for the next Get.
	dst2 := filepath.Join(t.TempDir(), b.SHA256)
	_, err = Get(context.Background(), b, []Source{src("a", a)}, dst2, Options{Client: c})
	if !errors.Is(err, ErrChunk) {
		t.Fatalf("A alone: %v", err)
	}
	if fi, err := os.Stat(dst2 + ".part"); err != nil || fi.Size() != chunkOf*testChunk {
		t.Fatalf(".part after a bad chunk: %v %v (want %d bytes)", fi, err, chunkOf*testChunk)
	}
}

// preload writes the first n bytes of data to dst.part.
func preload(t *testing.T, dst string, p []byte) {
	t.Helper()
	if err := os.WriteFile(dst+".part", p, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRangeRefusals(t *testing.T) {
	data, b := testBlob(t, 8*testChunk+10)
	held := int64(3*testChunk + 100)
	cases := []struct {
		name string
		h    func(w http.ResponseWriter, r *http.Request)
		want error
	}{
		{"200 to a Range request", func(w http.ResponseWriter, r *http.Request) {
			w.Write(data) // ignores Range
		}, ErrNotPartial},
		{"206 starting elsewhere", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(data)-1, len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data)
		}, ErrContentRange},
		{"206 of another total", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", held, len(data), len(data)+1))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[held:])
		}, ErrContentRange},
		{"206 without Content-Range", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[held:])
		}, ErrContentRange},
		{"206 with a malformed Content-Range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-/%d", held, len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[held:])
		}, ErrContentRange},
		{"206 with a Content-Length other than the range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", held, len(data)-1, len(data)))
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-int(held)+5))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[held:])
			w.Write(make([]byte, 5))
		}, ErrLength},
		{"error status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"code":"overloaded","message":"try later"}}`)
		}, ErrStatus},
		{"gzip", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", held, len(data)-1, len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[held:])
		}, ErrEncoding},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := serve(t, data, tc.h)
			c, _ := client(s)
			dst := filepath.Join(t.TempDir(), b.SHA256)
			preload(t, dst, data[:held])
			_, err := Get(context.Background(), b, []Source{src("bad", s)}, dst, Options{Client: c})
			var fe *Error
			if !errors.Is(err, tc.want) || !errors.As(err, &fe) || len(fe.Tried) != 1 {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == ErrStatus && !strings.Contains(err.Error(), "overloaded: try later") {
				t.Fatalf("error %q lacks the server's message", err)
			}
			got, _ := os.ReadFile(dst + ".part")
			if !bytes.Equal(got, data[:held]) {
				t.Fatalf(".part changed: %d bytes", len(got))
			}
			// The next source completes it from where it was.
			good := serve(t, data, nil)
			res, err := Get(context.Background(), b, []Source{src("bad", s), src("good", good)}, dst, Options{Client: c})
			if err != nil || res.Source != "good" || res.Resumed != held || good.written.Load() != b.Size-held {
				t.Fatalf("%+v %v, good wrote %d", res, err, good.written.Load())
			}
			mustFile(t, dst, data)
		})
	}
}

func TestWholeAnswerChecks(t *testing.T) {
	data, b := testBlob(t, 4*testChunk+3)
	cases := []struct {
		name string
		h    func(w http.ResponseWriter, r *http.Request)
		want error // nil: the blob completes
	}{
		{"short body", shortBy(data, 100, true), ErrShort},
		{"short body without length", shortBy(data, 100, false), ErrShort},
		{"longer Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)+10))
			w.Write(data)
			w.Write(make([]byte, 10))
		}, ErrLength},
		{"longer body without length: only Size read", func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush() // chunked
			w.Write(data)
			w.Write(make([]byte, 1<<20))
		}, nil},
		{"206 to a request without Range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(data)-1, len(data)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data)
		}, ErrContentRange},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := serve(t, data, tc.h)
			c, ct := client(s)
			dst := filepath.Join(t.TempDir(), b.SHA256)
			res, err := Get(context.Background(), b, []Source{src("s", s)}, dst, Options{Client: c})
			if tc.want == nil {
				if err != nil || res.Received != b.Size || ct.bytes(s) != b.Size {
					t.Fatalf("%+v %v, read %d", res, err, ct.bytes(s))
				}
				mustFile(t, dst, data)
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("dst exists after a failure: %v", err)
			}
		})
	}
}

// shortBy answers every request, Range or not, with n bytes fewer than it should.
func shortBy(data []byte, n int, length bool) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		from := 0
		if rg := r.Header.Get("Range"); rg != "" {
			from, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(data)-1, len(data)))
		}
		if length {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-from))
		}
		if from > 0 {
			w.WriteHeader(http.StatusPartialContent)
		}
		w.Write(data[from:max(from, len(data)-n)])
		w.(http.Flusher).Flush()
	}
}

func TestStalledSourceAbandoned(t *testing.T) {
	data, b := testBlob(t, 4*testChunk)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the servers close (cleanups run last first)
	for _, when := range []string{"before headers", "mid-body"} {
		t.Run(when, func(t *testing.T) {
			stall := serve(t, data, func(w http.ResponseWriter, r *http.Request) {
				if when == "mid-body" {
					w.Header().Set("Content-Length", strconv.Itoa(len(data)))
					w.Write(data[:testChunk+5])
					w.(http.Flusher).Flush()
				}
				select {
				case <-r.Context().Done():
				case <-release:
				}
			})
			good := serve(t, data, nil)
			c, _ := client(stall)
			dst := filepath.Join(t.TempDir(), b.SHA256)
			const timeout = 300 * time.Millisecond
			var fell atomic.Int64
			fell.Store(-1)
			start := time.Now()
			res, err := Get(context.Background(), b, []Source{src("stall", stall), src("good", good)}, dst, Options{Client: c, StallTimeout: timeout,
				Progress: func(have, total int64) {}})
			took := time.Since(start)
			if err != nil || res.Source != "good" {
				t.Fatalf("%+v %v", res, err)
			}
			if took < timeout || took > timeout+2*time.Second {
				t.Fatalf("took %s with a stall timeout of %s", took, timeout)
			}
			mustFile(t, dst, data)

			_, err = Get(context.Background(), b, []Source{src("stall", stall)}, filepath.Join(t.TempDir(), "x"), Options{Client: c, StallTimeout: timeout})
			if !errors.Is(err, ErrStall) {
				t.Fatalf("stalled alone: %v", err)
			}
		})
	}
}

// The .part of an earlier run is re-hashed: a bad whole chunk cuts it there.
func TestResumeRehashesPart(t *testing.T) {
	data, b := testBlob(t, 6*testChunk+50)
	s := serve(t, data, nil)
	c, _ := client(s)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	part := bytes.Clone(data[:4*testChunk+10])
	part[2*testChunk+7] ^= 1
	preload(t, dst, part)
	res, err := Get(context.Background(), b, []Source{src("s", s)}, dst, Options{Client: c})
	if err != nil || res.Resumed != 2*testChunk || s.written.Load() != b.Size-2*testChunk {
		t.Fatalf("%+v %v, server wrote %d", res, err, s.written.Load())
	}
	mustFile(t, dst, data)

	// A .part longer than the blob keeps only the blob's bytes.
	dst = filepath.Join(t.TempDir(), b.SHA256)
	preload(t, dst, append(bytes.Clone(data), "garbage"...))
	res, err = Get(context.Background(), b, nil, dst, Options{})
	if err != nil || res.Resumed != b.Size {
		t.Fatalf("%+v %v", res, err)
	}
	mustFile(t, dst, data)
}

// Bad bytes of an unfinished chunk from before are not the next source's fault: it is asked
// again from the chunk's start, once.
func TestBadPartialChunkFromBefore(t *testing.T) {
	data, b := testBlob(t, 6*testChunk+50)
	s := serve(t, data, nil)
	c, ct := client(s)
	dst := filepath.Join(t.TempDir(), b.SHA256)
	part := bytes.Clone(data[:3*testChunk+100])
	part[3*testChunk+50] ^= 1 // inside the unfinished chunk 3
	preload(t, dst, part)
	res, err := Get(context.Background(), b, []Source{src("s", s)}, dst, Options{Client: c})
	if err != nil || res.Source != "s" {
		t.Fatalf("%+v %v", res, err)
	}
	// Read: the rest of chunk 3 once, then everything from chunk 3 on.
	if want := (4*testChunk - int64(len(part))) + (b.Size - 3*testChunk); ct.bytes(s) != want || res.Received != want {
		t.Fatalf("read %d, received %d, want %d", ct.bytes(s), res.Received, want)
	}
	mustFile(t, dst, data)
}

func TestRateLimit(t *testing.T) {
	data, b := testBlob(t, 2*testChunk)
	s := serve(t, data, nil)
	c, _ := client(s)
	const bps = 128 << 10
	lim := rate.NewLimiter(bps, 16<<10)
	start := time.Now()
	if _, err := Get(context.Background(), b, []Source{src("s", s)}, filepath.Join(t.TempDir(), "x"), Options{Client: c, Limiter: lim}); err != nil {
		t.Fatal(err)
	}
	min := time.Duration(float64(b.Size-16<<10) / bps * 0.9 * float64(time.Second))
	if took := time.Since(start); took < min {
		t.Fatalf("%d bytes in %s at %d B/s (at least %s)", b.Size, took, bps, min)
	}
}

// Waiting for the rate limiter is not a stall: only the source's silence counts.
func TestRateLimitIsNotAStall(t *testing.T) {
	data, b := testBlob(t, 2*testChunk)
	s := serve(t, data, nil)
	c, _ := client(s)
	lim := rate.NewLimiter(256<<10, 64<<10) // a wait of up to 250 ms per piece
	res, err := Get(context.Background(), b, []Source{src("s", s)}, filepath.Join(t.TempDir(), "x"), Options{Client: c, Limiter: lim, StallTimeout: 100 * time.Millisecond})
	if err != nil || res.Source != "s" {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestNoSourcesAndBadBlob(t *testing.T) {
	data, b := testBlob(t, testChunk+1)
	_ = data
	_, err := Get(context.Background(), b, nil, filepath.Join(t.TempDir(), "x"), Options{})
	var fe *Error
	if !errors.As(err, &fe) || len(fe.Tried) != 0 {
		t.Fatalf("no sources: %v", err)
	}
	bad := b
	bad.Chunks = bad.Chunks[:1]
	if _, err := Get(context.Background(), bad, nil, filepath.Join(t.TempDir(), "x"), Options{}); err == nil || errors.As(err, &fe) {
		t.Fatalf("bad blob: %v", err)
	}
	bad = b
	bad.SHA256 = "../../etc/passwd"
	if _, err := Get(context.Background(), bad, nil, filepath.Join(t.TempDir(), "x"), Options{}); err == nil {
		t.Fatal("bad hash accepted")
	}
}

func TestContextCancelled(t *testing.T) {
	data, b := testBlob(t, 2*testChunk)
	s := serve(t, data, nil)
	c, _ := client(s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Get(ctx, b, []Source{src("s", s)}, filepath.Join(t.TempDir(), "x"), Options{Client: c})
	var fe *Error
	if !errors.Is(err, context.Canceled) || errors.As(err, &fe) {
		t.Fatalf("%v", err)
	}
}

func TestParseContentRange(t *testing.T) {
	good := []struct {
		in               string
		start, end, size int64
	}{
		{"bytes 0-0/1", 0, 0, 1},
		{"bytes 100-199/200", 100, 199, 200},
		{"bytes 5-9/1000", 5, 9, 1000},
		{"bytes 0-9223372036854775806/9223372036854775807", 0, 9223372036854775806, 9223372036854775807},
	}
	for _, tc := range good {
		s, e, n, err := ParseContentRange(tc.in)
		if err != nil || s != tc.start || e != tc.end || n != tc.size {
			t.Errorf("%q: %d %d %d %v", tc.in, s, e, n, err)
		}
	}
	for _, in := range []string{
		"", "bytes", "bytes ", "bytes 0-1", "bytes 0-1/*", "bytes */100", "bytes 1-0/5", "bytes 0-5/5",
		"Bytes 0-1/2", "bytes  0-1/2", "bytes 0 -1/2", "bytes +0-1/2", "bytes -1-1/2", "bytes 00-1/2",
		"bytes 0-01/2", "bytes 0-1/02", "bytes 0-1/2 ", " bytes 0-1/2", "bytes 0-1/2/3", "bytes 0-1-2/3",
		"bytes 0x1-2/3", "bytes 0-1/9223372036854775808", "bytes 0-1/99999999999999999999", "items 0-1/2",
		"bytes 0-1,3-4/5", "bytes 0-\x001/2",
	} {
		if s, e, n, err := ParseContentRange(in); err == nil {
			t.Errorf("%q accepted: %d %d %d", in, s, e, n)
		}
	}
}

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 100-199/200", "bytes */5", "bytes 01-2/3", "bytes 0-1/2 ", "bytes +1-2/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, total, err := ParseContentRange(s)
		if err != nil {
			return
		}
		if start < 0 || start > end || end >= total {
			t.Fatalf("%q: %d-%d/%d", s, start, end, total)
		}
		// Strict: only the canonical spelling parses.
		if canon := fmt.Sprintf("bytes %d-%d/%d", start, end, total); canon != s {
			t.Fatalf("%q accepted, canonical %q", s, canon)
		}
	})
}
