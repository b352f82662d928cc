package pull

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
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

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/manifest/manifesttest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

const testChunk = manifest.MinChunkSize

// pkgOf makes a package of the given files, signed by key/cert.
func pkgOf(t *testing.T, name string, files [][]byte, key crypto.Signer, cert *x509.Certificate) wire.DPPackage {
	t.Helper()
	m := &wire.Manifest{Name: name, Version: "1.0", ChunkSize: testChunk, Created: time.Now().Add(-time.Minute)}
	for i, data := range files {
		f := wire.ManifestFile{Path: fmt.Sprintf("f%d.bin", i), Size: int64(len(data)), Mode: 0o644, SHA256: hexsum(data)}
		for off := 0; off < len(data); off += testChunk {
			f.Chunks = append(f.Chunks, hexsum(data[off:min(off+testChunk, len(data))]))
		}
		m.Files = append(m.Files, f)
	}
	sm, err := manifest.Sign(m, key, []*x509.Certificate{cert})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(sm)
	return wire.DPPackage{Name: name, Version: "1.0", ManifestSHA256: manifest.Hash(sm.Manifest), Manifest: raw}
}

func hexsum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func randomFiles(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size+i*1000)
		rand.Read(out[i])
	}
	return out
}

// --- a library on disk ---

type dirLibrary struct{ dir string }

func (l dirLibrary) Path(sum string) string { return filepath.Join(l.dir, sum[:2], sum[2:4], sum) }
func (l dirLibrary) Has(sum string) bool {
	_, err := os.Stat(l.Path(sum))
	return err == nil
}

func (l dirLibrary) check(t *testing.T, files [][]byte) {
	t.Helper()
	for _, f := range files {
		got, err := os.ReadFile(l.Path(hexsum(f)))
		if err != nil || !bytes.Equal(got, f) {
			t.Fatalf("library lacks %s: %v", hexsum(f)[:12], err)
		}
	}
}

// --- a DP serving blobs ---

type dp struct {
	*httptest.Server
	blobs    map[string][]byte
	requests atomic.Int64
	written  atomic.Int64
	mu       sync.Mutex
	ranges   []string
	times    []time.Time
	active   atomic.Int64
	maxAct   atomic.Int64
	// behave, when set, may answer instead (return true when it did).
	behave func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool
}

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

func newDP(t *testing.T, files [][]byte) *dp {
	t.Helper()
	d := &dp{blobs: map[string][]byte{}}
	for _, f := range files {
		d.blobs[hexsum(f)] = f
	}
	d.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := d.requests.Add(1)
		a := d.active.Add(1)
		defer d.active.Add(-1)
		for m := d.maxAct.Load(); a > m && !d.maxAct.CompareAndSwap(m, a); m = d.maxAct.Load() {
		}
		d.mu.Lock()
		d.ranges = append(d.ranges, r.Header.Get("Range"))
		d.times = append(d.times, time.Now())
		behave := d.behave
		d.mu.Unlock()
		data, ok := d.blobs[strings.TrimPrefix(r.URL.Path, "/v1/content/")]
		if !ok {
			http.Error(w, `{"error":{"code":"not_found","message":"no such blob"}}`, http.StatusNotFound)
			return
		}
		cw := countingWriter{w, &d.written}
		if behave != nil && behave(n, cw, r, data) {
			return
		}
		w.Header().Set("ETag", `"`+hexsum(data)+`"`)
		http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(data))
	}))
	d.StartTLS()
	t.Cleanup(d.Close)
	return d
}

func (d *dp) setBehave(f func(n int64, w http.ResponseWriter, r *http.Request, data []byte) bool) {
	d.mu.Lock()
	d.behave = f
	d.mu.Unlock()
}

func (d *dp) rangesSeen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.ranges...)
}

// concurrency counts the response bodies open at once on the client side.
type concurrency struct {
	base       http.RoundTripper
	open, most atomic.Int64
}

func watch(c *http.Client) (*http.Client, *concurrency) {
	cc := &concurrency{base: c.Transport}
	return &http.Client{Transport: cc}, cc
}

func (c *concurrency) RoundTrip(r *http.Request) (*http.Response, error) {
	n := c.open.Add(1)
	for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
	}
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		c.open.Add(-1)
		return nil, err
	}
	resp.Body = &closeOnce{ReadCloser: resp.Body, done: func() { c.open.Add(-1) }}
	return resp, nil
}

type closeOnce struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *closeOnce) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

// --- running a puller ---

type run struct {
	p       *Puller
	lib     dirLibrary
	reports chan wire.DPPackageState
	cancel  context.CancelFunc
	done    chan error
}

func start(t *testing.T, client *http.Client, trust manifest.Trust, o Options, pkgs []wire.DPPackage, sources []Source) *run {
	t.Helper()
	r := &run{lib: dirLibrary{t.TempDir()}, reports: make(chan wire.DPPackageState, 1000), done: make(chan error, 1)}
	o.Library, o.Client, o.Trust = r.lib, client, trust
	o.Report = func(s wire.DPPackageState) { r.reports <- s }
	if o.StartJitter == 0 {
		o.StartJitter = -1
	}
	if o.Rand == nil {
		o.Rand = mrand.New(mrand.NewPCG(1, 2))
	}
	r.p = New(o)
	r.p.Set(pkgs, sources)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// until waits for a report of pkg in state (and returns it).
func (r *run) until(t *testing.T, name, state string) wire.DPPackageState {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case s := <-r.reports:
			if s.Name == name && s.State == state {
				return s
			}
		case <-timeout:
			t.Fatalf("%s never %s; states %+v", name, state, r.p.States())
		}
	}
}

func TestPreferredSourceUsed(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(3, 3*testChunk+17)
	a, b := newDP(t, files), newDP(t, files)
	app := pkgOf(t, "app", files, key, cert)
	r := start(t, a.Client(), ca.Trust(), Options{}, []wire.DPPackage{app},
		[]Source{{URL: b.URL, Priority: 2}, {URL: a.URL, Priority: 1}})
	s := r.until(t, "app", wire.DPReady)
	if s.Percent != 100 || s.Error != "" || s.Version != "1.0" {
		t.Fatalf("%+v", s)
	}
	r.lib.check(t, files)
	if a.requests.Load() != 3 || b.requests.Load() != 0 {
		t.Fatalf("preferred A got %d requests, B %d", a.requests.Load(), b.requests.Load())
	}
	if st := r.p.States(); len(st) != 1 || st[0].State != wire.DPReady {
		t.Fatalf("States %+v", st)
	}
	// The same assignment again keeps the state; a new manifest starts pending.
	r.p.Set([]wire.DPPackage{app}, nil)
	if st := r.p.States(); len(st) != 1 || st[0].State != wire.DPReady {
		t.Fatalf("States after the same Set %+v", st)
	}
	r.p.Set([]wire.DPPackage{pkgOf(t, "app", files, key, cert)}, nil) // a new signature: a new manifest
	// Pending until Run looks again (which it may already have done: the blobs are there).
	if st := r.p.States(); len(st) != 1 || st[0].State != wire.DPPending && st[0].State != wire.DPReady {
		t.Fatalf("States after a new manifest %+v", st)
	}
	r.until(t, "app", wire.DPReady) // every blob is there already
	if a.requests.Load() != 3 {
		t.Fatalf("%d requests", a.requests.Load())
	}
}

func TestEqualPrioritySpread(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(12, 1000)
	a, b := newDP(t, files), newDP(t, files)
	r := start(t, a.Client(), ca.Trust(), Options{}, []wire.DPPackage{pkgOf(t, "app", files, key, cert)},
		[]Source{{URL: a.URL, Priority: 5}, {URL: b.URL, Priority: 5}})
	r.until(t, "app", wire.DPReady)
	r.lib.check(t, files)
	if a.requests.Load() == 0 || b.requests.Load() == 0 || a.requests.Load()+b.requests.Load() != 12 {
		t.Fatalf("A got %d requests, B %d: not spread", a.requests.Load(), b.requests.Load())
	}
}

// The source cuts the connection halfway through its first two answers: the sync resumes
// each time and ends with a verified library, never asking again for bytes it holds.
func TestSyncOverConnectionCutTwice(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(1, 20*testChunk+333)
	data := files[0]
	s := newDP(t, files)
	s.setBehave(func(n int64, w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if n > 2 {
			return false
		}
		from := int64(0)
		if rg := r.Header.Get("Range"); rg != "" {
			from, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(data)-1, len(data)))
			w.Header().Set("Content-Length", strconv.FormatInt(int64(len(data))-from, 10))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		}
		w.Write(data[from : from+(int64(len(data))-from)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	r := start(t, s.Client(), ca.Trust(), Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		[]wire.DPPackage{pkgOf(t, "big", files, key, cert)}, []Source{{URL: s.URL, Priority: 1}})
	r.until(t, "big", wire.DPReady)
	r.lib.check(t, files)
	rg := s.rangesSeen()
	if len(rg) != 3 || rg[0] != "" {
		t.Fatalf("ranges asked: %q", rg)
	}
	var prev int64
	for _, x := range rg[1:] {
		from, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(x, "bytes="), "-"), 10, 64)
		if err != nil || from <= prev {
			t.Fatalf("ranges asked: %q", rg)
		}
		prev = from
	}
	if _, err := os.Stat(r.lib.Path(hexsum(data)) + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf(".part left: %v", err)
	}
}

func TestBadSourceFallsToNext(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(2, 4*testChunk)
	bad, good := newDP(t, files), newDP(t, files)
	bad.setBehave(func(_ int64, w http.ResponseWriter, r *http.Request, data []byte) bool {
		flipped := bytes.Clone(data)
		flipped[len(flipped)/2] ^= 1
		w.Header().Set("ETag", `"`+hexsum(data)+`"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(flipped))
		return true
	})
	r := start(t, bad.Client(), ca.Trust(), Options{}, []wire.DPPackage{pkgOf(t, "app", files, key, cert)},
		[]Source{{URL: bad.URL, Priority: 1}, {URL: good.URL, Priority: 2}})
	r.until(t, "app", wire.DPReady)
	r.lib.check(t, files)
	if bad.requests.Load() != 2 || good.requests.Load() != 2 {
		t.Fatalf("bad got %d requests, good %d", bad.requests.Load(), good.requests.Load())
	}
	// The good source was asked only from the bad chunk on.
	for _, rg := range good.rangesSeen() {
		if rg != fmt.Sprintf("bytes=%d-", 2*testChunk) {
			t.Fatalf("good source asked %q", rg)
		}
	}
}

func TestManifestRefused(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	dpKey := manifesttest.NewKey(t) // a DP's role, not content
	dpCert := ca.Leaf(t, dpKey, "urn:ibcm:site:TEST:role:dp", x509.ExtKeyUsageCodeSigning, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	other := manifesttest.New(t, "TEST")
	oKey, oCert := other.Key, other.Cert
	files := randomFiles(1, 1000)
	s := newDP(t, files)
	pinned := pkgOf(t, "pinned", files, key, cert)
	pinned.ManifestSHA256 = strings.Repeat("0", 64)
	renamed := pkgOf(t, "renamed", files, key, cert)
	renamed.Name = "other"
	r := start(t, s.Client(), ca.Trust(), Options{}, []wire.DPPackage{
		pkgOf(t, "by-dp", files, dpKey, dpCert),
		pkgOf(t, "foreign", files, oKey, oCert),
		pinned,
		renamed,
		{Name: "garbage", Version: "1.0", ManifestSHA256: strings.Repeat("1", 64), Manifest: json.RawMessage(`{"manifest":"x"}`)},
		pkgOf(t, "fine", files, key, cert),
	}, []Source{{URL: s.URL, Priority: 1}})
	want := map[string]error{"by-dp": manifest.ErrSigner, "foreign": manifest.ErrSigner, "pinned": manifest.ErrPinned,
		"other": manifest.ErrMalformed, "garbage": manifest.ErrMalformed}
	got := map[string]wire.DPPackageState{}
	timeout := time.After(20 * time.Second)
	for len(got) < len(want)+1 {
		select {
		case st := <-r.reports:
			if st.State == wire.DPFailed || st.State == wire.DPReady {
				got[st.Name] = st
			}
		case <-timeout:
			t.Fatalf("states %+v", r.p.States())
		}
	}
	for name, w := range want {
		st := got[name]
		if st.State != wire.DPFailed || !strings.Contains(st.Error, strings.TrimPrefix(w.Error(), "manifest ")) {
			t.Errorf("%s: %+v, want failed with %q", name, st, w)
		}
	}
	if got["fine"].State != wire.DPReady {
		t.Fatalf("fine: %+v", got["fine"])
	}
	if s.requests.Load() != 1 {
		t.Fatalf("%d requests: something of a refused package was fetched", s.requests.Load())
	}
}

func TestRateLimitShared(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(2, 96<<10)
	s := newDP(t, files)
	const bps = 128 << 10
	startAt := time.Now()
	c, cc := watch(s.Client())
	r := start(t, c, ca.Trust(), Options{BytesPerSecond: bps, tick: 50 * time.Millisecond}, []wire.DPPackage{pkgOf(t, "app", files, key, cert)},
		[]Source{{URL: s.URL, Priority: 1}})
	var percents []int
	for st := range r.reports {
		if st.State == wire.DPSyncing {
			percents = append(percents, st.Percent)
		}
		if st.State == wire.DPReady {
			break
		}
	}
	took := time.Since(startAt)
	// Syncing reports climb, short of 100 until ready.
	if len(percents) < 3 || percents[len(percents)-1] == 0 {
		t.Fatalf("syncing percents %v", percents)
	}
	for i, pc := range percents {
		if pc < 0 || pc > 99 || (i > 0 && pc < percents[i-1]) {
			t.Fatalf("syncing percents %v", percents)
		}
	}
	total := int64(len(files[0]) + len(files[1]))
	if cc.most.Load() != 2 {
		t.Fatalf("%d downloads at once, want 2 sharing the limit", cc.most.Load())
	}
	// Two downloads at once share one bucket: the whole DP stays within bps.
	if min := time.Duration(float64(total-int64(burst(bps))) / bps * float64(time.Second) * 0.9); took < min {
		t.Fatalf("%d bytes in %s at %d B/s: at least %s", total, took, bps, min)
	}
	r.lib.check(t, files)
}

func TestBackoffAfterFailure(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(1, 1000)
	s := newDP(t, files)
	var failing atomic.Bool
	failing.Store(true)
	s.setBehave(func(_ int64, w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if !failing.Load() {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"error":{"code":"overloaded","message":"busy"}}`)
		return true
	})
	const minB = 100 * time.Millisecond
	r := start(t, s.Client(), ca.Trust(), Options{MinBackoff: minB, MaxBackoff: 10 * minB}, []wire.DPPackage{pkgOf(t, "app", files, key, cert)},
		[]Source{{URL: s.URL, Priority: 1}})
	for i := 0; i < 3; i++ {
		st := r.until(t, "app", wire.DPFailed)
		if !strings.Contains(st.Error, "503") || !strings.Contains(st.Error, "busy") {
			t.Fatalf("error %q", st.Error)
		}
	}
	s.mu.Lock()
	times := append([]time.Time(nil), s.times...)
	s.mu.Unlock()
	if len(times) < 3 {
		t.Fatalf("%d attempts", len(times))
	}
	// Waits of at least half of 100 ms, then of 200 ms (jitter keeps half).
	if g := times[1].Sub(times[0]); g < minB/2 {
		t.Fatalf("second attempt after %s", g)
	}
	if g := times[2].Sub(times[1]); g < minB {
		t.Fatalf("third attempt after %s", g)
	}
	failing.Store(false)
	r.until(t, "app", wire.DPReady)
	r.lib.check(t, files)
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	p := New(Options{MinBackoff: time.Second, MaxBackoff: time.Minute, Rand: mrand.New(mrand.NewPCG(3, 4))})
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 7: time.Minute, 100: time.Minute} {
		for range 50 {
			if d := p.backoff(n); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %s, want %s..%s", n, d, want/2, want)
			}
		}
	}
	if d := New(Options{}).o; d.StartJitter != DefaultStartJitter || d.Parallel != 2 || d.MaxBackoff != DefaultMaxBackoff {
		t.Fatalf("defaults %+v", d)
	}
}

// No stampede: a new package waits its random start delay, and at most Parallel blobs are
// fetched at once.
func TestStartJitterAndParallel(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(6, 2*testChunk)
	s := newDP(t, files)
	c, cc := watch(s.Client())
	const jitter = 400 * time.Millisecond
	// The same seed as the puller's: its first draw is the package's start delay.
	delay := time.Duration(mrand.New(mrand.NewPCG(7, 8)).Int64N(int64(jitter) + 1))
	begin := time.Now()
	r := start(t, c, ca.Trust(), Options{StartJitter: jitter, BytesPerSecond: 4 << 20, Rand: mrand.New(mrand.NewPCG(7, 8))},
		[]wire.DPPackage{pkgOf(t, "app", files, key, cert)}, []Source{{URL: s.URL, Priority: 1}})
	r.until(t, "app", wire.DPReady)
	s.mu.Lock()
	first := s.times[0].Sub(begin)
	s.mu.Unlock()
	if first < delay || first > jitter+2*time.Second {
		t.Fatalf("first request after %s, the start delay is %s", first, delay)
	}
	if m := cc.most.Load(); m != 2 {
		t.Fatalf("%d downloads at once", m)
	}
	r.lib.check(t, files)
}

// A blob that leaves the library (quarantined) is fetched again after Wake.
func TestWakeRefetchesLostBlob(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(2, 1000)
	s := newDP(t, files)
	r := start(t, s.Client(), ca.Trust(), Options{}, []wire.DPPackage{pkgOf(t, "app", files, key, cert)}, []Source{{URL: s.URL, Priority: 1}})
	r.until(t, "app", wire.DPReady)
	if err := os.Remove(r.lib.Path(hexsum(files[1]))); err != nil {
		t.Fatal(err)
	}
	r.p.Wake()
	r.until(t, "app", wire.DPSyncing)
	r.until(t, "app", wire.DPReady)
	r.lib.check(t, files)
	if s.requests.Load() != 3 {
		t.Fatalf("%d requests", s.requests.Load())
	}
}
