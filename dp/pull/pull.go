// Package pull owns a pull-DP's syncer: it makes the DP's library hold every blob of every
// package version distributed to it, fetching what is missing from its sources (other DPs)
// with dp/fetch — lower priority first, shuffled among equals, resuming, verifying every
// chunk, under one bandwidth limit for the whole DP, with jittered exponential backoff per
// package after a failure, a random start delay and a bound on the blobs fetched at once, so
// that many DPs starting together do not stampede their source. It reports each package's
// state (pending, syncing n %, ready, failed + why).
//
// The manifest of each package is verified (the site's content signer, the pinned hash)
// before anything of it is fetched. The library is the DP's (dp/library): the puller only
// asks it whether a blob is there and where a blob goes.
package pull

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/ibcm-project/ibcm/dp/fetch"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Library is the DP's content store as the puller sees it.
type Library interface {
	Has(sum string) bool    // the blob is complete under its hash name
	Path(sum string) string // where the blob goes (its .part beside it)
}

// Source is a DP to pull from: its base URL, and its priority (lower is preferred).
type Source struct {
	URL      string
	Priority int
}

// Defaults of Options.
const (
	DefaultStartJitter = 5 * time.Second
	DefaultParallel    = 2
	DefaultMinBackoff  = 2 * time.Second
	DefaultMaxBackoff  = 5 * time.Minute
)

// Options of a Puller. Only Library, Client and Trust are required.
type Options struct {
	Library Library
	Client  *http.Client // mutual TLS with the DP's site-server certificate
	Trust   manifest.Trust
	// BytesPerSecond bounds the bytes the whole DP pulls per second; 0 = unlimited.
	BytesPerSecond int64
	// Report, when set, is called from Run's goroutine each time a package's state or
	// percent changes.
	Report func(wire.DPPackageState)
	Log    zerolog.Logger
	// Rand drives the shuffle of equal sources and the jitter (tests fix it); it is used
	// under the puller's lock. Nil: seeded at random.
	Rand *rand.Rand

	// StartJitter: a package new to the puller (every package after a restart) waits a
	// random 0..StartJitter before its first download; 0 = DefaultStartJitter, < 0 = none.
	StartJitter  time.Duration
	Parallel     int           // blobs fetched at once; 0 = DefaultParallel
	StallTimeout time.Duration // see fetch.Options; 0 = fetch's default
	MinBackoff   time.Duration // the first wait after a failure (jittered to half..full); 0 = DefaultMinBackoff
	MaxBackoff   time.Duration // the cap, doubling from MinBackoff; 0 = DefaultMaxBackoff
	Now          func() time.Time

	tick time.Duration // how often Run refreshes percents (1s; tests shorten it)
}

// Puller syncs a DP's library with the packages distributed to it. Set it, Run it.
type Puller struct {
	o    Options
	lim  *rate.Limiter
	wake chan struct{}

	mu       sync.Mutex
	rnd      *rand.Rand
	pkgs     []*pkg
	sources  []Source
	inflight map[string]*job // blob hash → its download
}

// pkg is one package version as the puller tracks it.
type pkg struct {
	key           string
	name, version string
	pin           string
	raw           []byte
	verified      bool
	bad           error // the manifest was refused: nothing to retry until Set changes it
	blobs         []fetch.Blob
	total         int64
	has           map[string]bool // blobs seen complete in the library
	checked       bool            // has was filled from the library once

	state    string
	percent  int
	err      string
	updated  time.Time
	failures int
	next     time.Time // no new download before (backoff)
	dirty    bool      // to report
}

type job struct {
	blob fetch.Blob
	have atomic.Int64
}

type result struct {
	sum      string
	res      fetch.Result
	err      error
	canceled bool // Run is ending: not the sources' fault
}

// New returns a Puller; call Set and Run.
func New(o Options) *Puller {
	if o.StartJitter == 0 {
		o.StartJitter = DefaultStartJitter
	}
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.tick <= 0 {
		o.tick = time.Second
	}
	if o.Rand == nil {
		var seed [16]byte
		cryptorand.Read(seed[:])
		o.Rand = rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	}
	p := &Puller{o: o, rnd: o.Rand, wake: make(chan struct{}, 1), inflight: map[string]*job{}}
	if o.BytesPerSecond > 0 {
		p.lim = rate.NewLimiter(rate.Limit(o.BytesPerSecond), burst(o.BytesPerSecond))
	}
	return p
}

// burst is the limiter's bucket: a quarter second of bytes, within 1 byte and 64 KiB, so a
// small limit is smooth and a large one does not wake for every read.
func burst(bps int64) int {
	return int(min(max(bps/4, 1), 64<<10))
}

// Set replaces what the DP must hold and where it pulls from. Packages already known keep
// their state (and their backoff); new ones start pending, after their start jitter. Downloads under way finish.
func (p *Puller) Set(pkgs []wire.DPPackage, sources []Source) {
	p.mu.Lock()
	old := map[string]*pkg{}
	for _, k := range p.pkgs {
		old[k.key] = k
	}
	p.pkgs = p.pkgs[:0:0]
	seen := map[string]bool{}
	for _, dp := range pkgs {
		rawSum := sha256.Sum256(dp.Manifest)
		key := dp.Name + "\x00" + dp.Version + "\x00" + dp.ManifestSHA256 + "\x00" + hex.EncodeToString(rawSum[:])
		if seen[key] {
			continue
		}
		seen[key] = true
		if k := old[key]; k != nil {
			p.pkgs = append(p.pkgs, k)
			continue
		}
		k := &pkg{key: key, name: dp.Name, version: dp.Version, pin: dp.ManifestSHA256,
			raw: append([]byte(nil), dp.Manifest...), state: wire.DPPending, updated: p.o.Now(), dirty: true, has: map[string]bool{}}
		if p.o.StartJitter > 0 {
			// Many DPs learn of a package at the same moment: spread their first requests.
			k.next = k.updated.Add(time.Duration(p.rnd.Int64N(int64(p.o.StartJitter) + 1)))
		}
		p.pkgs = append(p.pkgs, k)
	}
	p.sources = append([]Source(nil), sources...)
	p.mu.Unlock()
	p.Wake()
}

// Wake makes Run look at every package again now: after Set, or when the library lost a
// blob (validation quarantined it). It does not cut a backoff short.
func (p *Puller) Wake() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// States returns the state of every package, in the order Set gave them.
func (p *Puller) States() []wire.DPPackageState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]wire.DPPackageState, 0, len(p.pkgs))
	for _, k := range p.pkgs {
		out = append(out, k.wire())
	}
	return out
}

func (k *pkg) wire() wire.DPPackageState {
	return wire.DPPackageState{Name: k.name, Version: k.version, State: k.state, Percent: k.percent, Error: k.err, Updated: k.updated}
}

// Run syncs until ctx ends; it returns ctx's error once every download under way stopped.
func (p *Puller) Run(ctx context.Context) error {
	done := make(chan result)
	running := 0
	full := true // ask the library about every blob
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	ticker := time.NewTicker(p.o.tick)
	defer ticker.Stop()
	for {
		started, wait := p.schedule(ctx, done, full)
		full = false
		running += started
		p.flush()
		if wait < 0 {
			wait = time.Hour
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			for ; running > 0; running-- {
				<-done
			}
			return ctx.Err()
		case <-p.wake:
			full = true
		case <-timer.C:
		case r := <-done:
			running--
			p.finish(r)
		case <-ticker.C:
			p.progress()
		}
	}
}

// schedule verifies new manifests, marks ready what the library holds, and starts
// downloads of missing blobs up to Parallel. It returns how many it started and how long
// until the next backoff ends (-1: none). The library is asked about every blob of a
// package once, and again only when full (after Wake or Set); between, finish keeps track.
func (p *Puller) schedule(ctx context.Context, done chan<- result, full bool) (int, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.o.Now()
	started := 0
	wait := time.Duration(-1)
	for _, k := range p.pkgs {
		if k.bad != nil {
			continue
		}
		if !k.verified {
			if err := p.verify(k); err != nil {
				k.bad = err
				k.set(wire.DPFailed, 0, err.Error(), now)
				p.o.Log.Warn().Str("package", k.name).Str("version", k.version).Err(err).Msg("manifest refused")
				continue
			}
		}
		if now.Before(k.next) { // start jitter or backoff
			if d := k.next.Sub(now); wait < 0 || d < wait {
				wait = d
			}
			continue
		}
		recheck := full || !k.checked
		k.checked = true
		missing := 0
		for _, b := range k.blobs {
			if recheck {
				k.has[b.SHA256] = p.o.Library.Has(b.SHA256)
			}
			if k.has[b.SHA256] {
				continue
			}
			missing++
			if p.inflight[b.SHA256] != nil || len(p.inflight) >= p.o.Parallel {
				continue
			}
			j := &job{blob: b}
			p.inflight[b.SHA256] = j
			started++
			go p.fetch(ctx, j, p.order(), done)
		}
		switch {
		case missing == 0:
			if k.state != wire.DPReady {
				k.failures = 0
				k.set(wire.DPReady, 100, "", now)
				p.o.Log.Info().Str("package", k.name).Str("version", k.version).Msg("package ready")
			}
		case p.active(k):
			k.set(wire.DPSyncing, p.percent(k), "", now)
		case k.state == wire.DPReady:
			k.set(wire.DPPending, p.percent(k), "", now) // a blob went missing; waits for a slot
		}
	}
	return started, wait
}

// verify checks k's signed manifest and lists its blobs.
func (p *Puller) verify(k *pkg) error {
	sm, err := manifest.ParseSigned(k.raw)
	if err != nil {
		return fmt.Errorf("manifest of %s %s: %w", k.name, k.version, err)
	}
	m, err := manifest.Verify(sm, p.o.Trust, k.pin)
	if err != nil {
		return fmt.Errorf("manifest of %s %s: %w", k.name, k.version, err)
	}
	if m.Name != k.name || m.Version != k.version {
		return fmt.Errorf("manifest of %s %s: %w: it is %s %s", k.name, k.version, manifest.ErrMalformed, m.Name, m.Version)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if seen[f.SHA256] {
			continue
		}
		seen[f.SHA256] = true
		k.blobs = append(k.blobs, fetch.BlobOf(m, f))
		k.total += f.Size
	}
	k.verified = true
	return nil
}

// active reports whether a blob of k is being fetched.
func (p *Puller) active(k *pkg) bool {
	for _, b := range k.blobs {
		if p.inflight[b.SHA256] != nil {
			return true
		}
	}
	return false
}

// percent is the share of k's bytes held (complete blobs and downloads under way), below
// 100 until every blob is in the library.
func (p *Puller) percent(k *pkg) int {
	if k.total == 0 {
		return 0
	}
	var held int64
	for _, b := range k.blobs {
		if k.has[b.SHA256] {
			held += b.Size
		} else if j := p.inflight[b.SHA256]; j != nil {
			held += min(j.have.Load(), b.Size)
		}
	}
	return int(min(held*100/k.total, 99))
}

func (k *pkg) set(state string, percent int, err string, now time.Time) {
	if k.state == state && k.percent == percent && k.err == err {
		return
	}
	k.state, k.percent, k.err, k.updated, k.dirty = state, percent, err, now, true
}

// order is the sources for one download: lower priority first, shuffled among equals.
// Called with mu held.
func (p *Puller) order() []fetch.Source {
	s := append([]Source(nil), p.sources...)
	p.rnd.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	sort.SliceStable(s, func(i, j int) bool { return s[i].Priority < s[j].Priority })
	out := make([]fetch.Source, len(s))
	for i, x := range s {
		out[i] = fetch.Source{Name: x.URL, URL: x.URL}
	}
	return out
}

func (p *Puller) fetch(ctx context.Context, j *job, sources []fetch.Source, done chan<- result) {
	res, err := fetch.Get(ctx, j.blob, sources, p.o.Library.Path(j.blob.SHA256), fetch.Options{
		Client:       p.o.Client,
		Limiter:      p.lim,
		StallTimeout: p.o.StallTimeout,
		Progress:     func(have, _ int64) { j.have.Store(have) },
	})
	done <- result{sum: j.blob.SHA256, res: res, err: err, canceled: ctx.Err() != nil}
}

// finish takes the end of one download into the state of every package that holds it.
func (p *Puller) finish(r result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.o.Now()
	delete(p.inflight, r.sum)
	held := false
	if r.err == nil {
		// Asked, not assumed: the blob may have left the library (quarantine) since.
		held = p.o.Library.Has(r.sum)
		if !held {
			// Counted as a failure (with its backoff): fetching again at once would
			// find the file in place and loop, re-hashing it each time.
			r.err = fmt.Errorf("blob %s: downloaded, but the library does not hold it", r.sum[:12])
		}
		p.o.Log.Debug().Str("sha256", r.sum).Str("source", r.res.Source).Int64("received", r.res.Received).Int64("resumed", r.res.Resumed).Msg("blob fetched")
	}
	for _, k := range p.pkgs {
		if !k.holds(r.sum) {
			continue
		}
		if r.err != nil {
			if r.canceled {
				continue
			}
			k.failures++
			k.next = now.Add(p.backoff(k.failures))
			k.set(wire.DPFailed, p.percent(k), r.err.Error(), now)
			p.o.Log.Warn().Str("package", k.name).Str("version", k.version).Err(r.err).Dur("retry_in", k.next.Sub(now)).Msg("pull failed")
			continue
		}
		k.has[r.sum] = held
		if k.state != wire.DPFailed {
			k.set(wire.DPSyncing, p.percent(k), "", now) // schedule marks it ready
		}
	}
}

func (k *pkg) holds(sum string) bool {
	for _, b := range k.blobs {
		if b.SHA256 == sum {
			return true
		}
	}
	return false
}

// backoff is the wait after the n-th failure in a row: MinBackoff doubling up to
// MaxBackoff, jittered to between half and all of it. Called with mu held.
func (p *Puller) backoff(n int) time.Duration {
	d := p.o.MinBackoff
	for i := 1; i < n && d < p.o.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.o.MaxBackoff)
	return d/2 + time.Duration(p.rnd.Int64N(int64(d/2)+1))
}

// progress refreshes the percent of packages being synced.
func (p *Puller) progress() {
	p.mu.Lock()
	now := p.o.Now()
	for _, k := range p.pkgs {
		if k.state == wire.DPSyncing {
			k.set(wire.DPSyncing, p.percent(k), "", now)
		}
	}
	p.mu.Unlock()
	p.flush()
}

// flush reports the packages whose state changed. Only Run's goroutine calls it, so
// reports come in order.
func (p *Puller) flush() {
	if p.o.Report == nil {
		return
	}
	p.mu.Lock()
	var out []wire.DPPackageState
	for _, k := range p.pkgs {
		if k.dirty {
			k.dirty = false
			out = append(out, k.wire())
		}
	}
	p.mu.Unlock()
	for _, s := range out {
		p.o.Report(s)
	}
}
