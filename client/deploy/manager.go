package deploy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// ErrUnavailable wraps a failure to learn the DPs that is nobody's fault (no MP session
// yet): the deployment waits for Wake, and the attempt does not count.
var ErrUnavailable = errors.New("no management point to ask for the DPs of this location")

// Defaults of Config.
const (
	DefaultAttempts     = 3
	DefaultRetryBase    = 30 * time.Second
	DefaultStallTimeout = 30 * time.Second
	maxRecords          = 1000 // records of deployments no longer in the policy beyond it are forgotten, oldest first
)

// Config is what the agent gives the deployments.
type Config struct {
	Dir          string // the state directory: deployments.json, cache/, packages/
	CacheSize    int64  // DefaultCacheSize when zero
	StallTimeout time.Duration
	// Client talks to DPs (mutual TLS with the device's certificate, the site's roots).
	Client func() *http.Client
	// Locate returns the DP URLs of the device's current location, preferred first; an
	// error wrapping ErrUnavailable means "later".
	Locate func(ctx context.Context) ([]string, error)
	// Trust verifies manifests: the pinned roots, the site code, the CRL.
	Trust func() manifest.Trust
	// Report spools a status message (component wire.DeploymentComponent).
	Report    func(severity, text string, fields map[string]string)
	Installer Installer // DirectInstaller when nil
	Log       zerolog.Logger
	Attempts  int           // DefaultAttempts when zero
	RetryBase time.Duration // DefaultRetryBase when zero: the first wait after a failure, doubled each time, ±25 %
}

// Manager carries out the deployments of the policy, one at a time, in policy order.
type Manager struct {
	c   Config
	log zerolog.Logger

	mu        sync.Mutex
	recs      []*Record // every record, oldest first (the file's order)
	policy    []wire.Deployment
	notBefore map[string]time.Time
	running   string
	stop      context.CancelFunc
	removed   bool      // the running deployment left the policy
	idleUntil time.Time // no MP to name the DPs: nothing to try before then, or Wake
	wakes     uint64    // Wake calls, so one during an attempt is not lost
	wake      chan struct{}
	prune     bool // the policy changed: package directories it no longer names are to go
}

// New loads the local record of deployments.
func New(c Config) (*Manager, error) {
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.Attempts <= 0 {
		c.Attempts = DefaultAttempts
	}
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.Installer == nil {
		c.Installer = DirectInstaller{}
	}
	if c.Report == nil {
		c.Report = func(string, string, map[string]string) {}
	}
	recs, err := ReadState(c.Dir)
	if err != nil {
		return nil, err
	}
	m := &Manager{c: c, log: c.Log.With().Str("component", "deploy").Logger(), notBefore: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	for i := range recs {
		m.recs = append(m.recs, &recs[i])
	}
	return m, nil
}

// Wake makes the manager look at its work now (a new MP session, a location change).
func (m *Manager) Wake() {
	m.mu.Lock()
	m.idleUntil = time.Time{}
	m.wakes++
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Records returns a copy of the local record.
func (m *Manager) Records() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Record, len(m.recs))
	for i, r := range m.recs {
		out[i] = *r
	}
	return out
}

func (m *Manager) find(id string) *Record {
	for _, r := range m.recs {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// SetPolicy takes the deployments of a newly fetched policy: new ones are recorded as
// pending (and reported), those no longer listed are stopped (their records kept), and the
// work starts at once.
func (m *Manager) SetPolicy(ds []wire.Deployment) {
	var reports []Record
	m.mu.Lock()
	in := map[string]bool{}
	m.policy = nil
	for _, d := range ds {
		if in[d.ID] || d.ID == "" {
			continue
		}
		in[d.ID] = true
		m.policy = append(m.policy, d)
		r := m.find(d.ID)
		if r != nil && r.ManifestSHA256 != d.ManifestSHA256 { // the same id pinned to other bytes: start again
			m.recs = slices.DeleteFunc(m.recs, func(x *Record) bool { return x == r })
			r = nil
		}
		if r == nil {
			r = &Record{ID: d.ID, Package: d.Package, Version: d.Version, ManifestSHA256: d.ManifestSHA256, Install: d.Install,
				State: wire.DeployPending, Updated: time.Now().UTC()}
			m.recs = append(m.recs, r)
			reports = append(reports, *r)
		}
		r.InPolicy = true
	}
	m.prune = true
	for _, r := range m.recs {
		if !in[r.ID] && r.InPolicy {
			r.InPolicy = false
			if !r.Final {
				r.Error = "stopped: no longer in the policy"
				r.Updated = time.Now().UTC()
			}
			if m.running == r.ID && m.stop != nil {
				m.removed = true
				m.stop()
			}
		}
	}
	m.trim()
	m.saveLocked()
	m.mu.Unlock()
	for _, r := range reports {
		m.report(r)
	}
	m.Wake()
}

// trim forgets the oldest records of deployments no longer in the policy beyond maxRecords.
func (m *Manager) trim() {
	for n := len(m.recs); n > maxRecords; n-- {
		i := slices.IndexFunc(m.recs, func(r *Record) bool { return !r.InPolicy })
		if i < 0 {
			return
		}
		m.recs = slices.Delete(m.recs, i, i+1)
	}
}

func (m *Manager) saveLocked() {
	recs := make([]Record, len(m.recs))
	for i, r := range m.recs {
		recs[i] = *r
	}
	if err := writeState(m.c.Dir, recs); err != nil {
		m.log.Error().Err(err).Msg("writing " + StateFile)
	}
}

// update changes the record of id, writes the file and, when report, sends the state.
func (m *Manager) update(id string, report bool, fn func(r *Record)) {
	m.mu.Lock()
	r := m.find(id)
	if r == nil {
		m.mu.Unlock()
		return
	}
	fn(r)
	r.Updated = time.Now().UTC()
	m.saveLocked()
	cp := *r
	m.mu.Unlock()
	if report {
		m.report(cp)
	}
}

func (m *Manager) report(r Record) {
	sev := "info"
	text := fmt.Sprintf("deployment %s (%s %s): %s", r.ID, r.Package, r.Version, r.State)
	switch {
	case r.State == wire.DeployFailed:
		sev = "error"
	case r.Error != "":
		sev = "warning"
	}
	if r.State == wire.DeployDownloading {
		text += fmt.Sprintf(" %d %%", r.Percent)
	}
	if r.ExitCode != nil {
		text += fmt.Sprintf(", exit code %d", *r.ExitCode)
	}
	if r.Error != "" {
		text += ": " + r.Error
	}
	m.c.Report(sev, truncate(text, wire.MaxStatusText-8), r.fields())
	ev := m.log.Info()
	if sev != "info" {
		ev = m.log.Warn()
	}
	ev.Str("deployment", r.ID).Str("package", r.Package).Str("version", r.Version).Str("state", r.State).Int("percent", r.Percent).Str("error", r.Error).Msg("deployment")
}

// next picks the first deployment of the policy with work to do now, or says how long to
// wait for one (0: nothing to do).
func (m *Manager) next() (*wire.Deployment, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var wait time.Duration
	now := time.Now()
	if m.idleUntil.After(now) {
		return nil, m.idleUntil.Sub(now)
	}
	for i := range m.policy {
		d := m.policy[i]
		r := m.find(d.ID)
		if r == nil || r.Final {
			continue
		}
		if nb := m.notBefore[d.ID]; nb.After(now) {
			if w := nb.Sub(now); wait == 0 || w < wait {
				wait = w
			}
			continue
		}
		return &d, 0
	}
	return nil, wait
}

// prunePackages removes the package directories (<state>/packages/<name>/<version>) that
// no deployment of the policy names, once after each policy change. Run calls it between
// deployments, so it never races a placement or an install.
func (m *Manager) prunePackages() {
	m.mu.Lock()
	if !m.prune {
		m.mu.Unlock()
		return
	}
	m.prune = false
	keep := map[string]bool{}
	for _, d := range m.policy {
		keep[d.Package+"/"+d.Version] = true
	}
	m.mu.Unlock()
	removed, err := prunePackages(m.c.Dir, keep)
	if len(removed) > 0 {
		m.log.Info().Strs("removed", removed).Msg("package directories no deployment of the policy names removed")
	}
	if err != nil {
		m.log.Warn().Err(err).Msg("removing package directories")
	}
}

// Run carries out the deployments until ctx is done.
func (m *Manager) Run(ctx context.Context) {
	for {
		m.prunePackages()
		d, wait := m.next()
		if d == nil {
			var t <-chan time.Time
			var timer *time.Timer
			if wait > 0 {
				timer = time.NewTimer(wait)
				t = timer.C
			}
			select {
			case <-ctx.Done():
			case <-m.wake:
			case <-t:
			}
			if timer != nil {
				timer.Stop()
			}
			if ctx.Err() != nil {
				return
			}
			continue
		}
		m.process(ctx, *d)
		if ctx.Err() != nil {
			return
		}
	}
}

// installError is an install command that ran and failed (code -1: killed, or it never
// started).
type installError struct {
	code int
	err  error
}

func (e *installError) Error() string { return e.err.Error() }

func (m *Manager) process(ctx context.Context, d wire.Deployment) {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	m.running, m.stop, m.removed = d.ID, cancel, false
	wakes := m.wakes
	still := slices.ContainsFunc(m.policy, func(x wire.Deployment) bool { return x.ID == d.ID })
	m.mu.Unlock()
	if !still { // the policy changed since next picked it
		m.mu.Lock()
		m.running, m.stop = "", nil
		m.mu.Unlock()
		return
	}
	err := m.attempt(dctx, d)
	m.mu.Lock()
	removed := m.removed
	m.running, m.stop = "", nil
	m.mu.Unlock()
	var ie *installError
	switch {
	case err == nil:
		delete(m.notBefore, d.ID)
	case removed:
		m.log.Info().Str("deployment", d.ID).Msg("deployment stopped: no longer in the policy")
	case ctx.Err() != nil:
		// the agent stops; the next run goes on where this one was
	case errors.Is(err, ErrUnavailable):
		m.mu.Lock()
		if m.wakes == wakes { // else an MP came up meanwhile: try again now
			m.idleUntil = time.Now().Add(time.Minute) // or until Wake
		}
		m.mu.Unlock()
		m.log.Debug().Err(err).Str("deployment", d.ID).Msg("deployment waits")
	default:
		m.update(d.ID, true, func(r *Record) { // under m.mu

			r.Attempts++
			r.Error = err.Error()
			r.ExitCode = nil
			if errors.As(err, &ie) { // -1: killed (the timeout, a signal)
				c := ie.code
				r.ExitCode = &c
			}
			if r.Attempts >= m.c.Attempts || errors.Is(err, ErrTooLarge) {
				r.State, r.Final = wire.DeployFailed, true
				if r.Attempts > 1 {
					r.Error = fmt.Sprintf("%s (after %d attempts)", r.Error, r.Attempts)
				}
				return
			}
			wait := m.c.RetryBase << (r.Attempts - 1)
			wait = time.Duration(float64(wait) * (0.75 + 0.5*rand.Float64()))
			r.State = wire.DeployPending
			r.Error = fmt.Sprintf("attempt %d of %d failed, next in %s: %s", r.Attempts, m.c.Attempts, wait.Round(time.Millisecond), err)
			m.notBefore[d.ID] = time.Now().Add(wait)
		})
	}
}

func (m *Manager) attempt(ctx context.Context, d wire.Deployment) error {
	// The same signed bytes installed by another deployment: nothing to do again.
	if d.Install {
		m.mu.Lock()
		var by string
		for _, r := range m.recs {
			if r.ID != d.ID && r.ManifestSHA256 == d.ManifestSHA256 && r.State == wire.DeployInstalled {
				by = r.ID
			}
		}
		m.mu.Unlock()
		if by != "" {
			m.update(d.ID, true, func(r *Record) {
				r.State, r.Final, r.Percent, r.Error = wire.DeployInstalled, true, 100, ""
			})
			m.log.Info().Str("deployment", d.ID).Str("installed_by", by).Msg("already installed by another deployment")
			return nil
		}
	}
	urls, err := m.c.Locate(ctx)
	if err != nil {
		return err
	}
	dps, err := CheckDPs(urls)
	if err != nil {
		return err
	}
	client := m.c.Client()
	mf, dp, err := FetchManifest(ctx, client, dps, d, m.c.Trust())
	if err != nil {
		return err
	}
	cache := filepath.Join(m.c.Dir, CacheDir)
	if err := makeRoom(cache, m.c.CacheSize, mf, m.neededBlobs(d.ID)); err != nil {
		return err
	}
	var sums []string
	for _, f := range uniqueBlobs(mf) {
		sums = append(sums, f.SHA256)
	}
	m.update(d.ID, true, func(r *Record) {
		r.State, r.Percent, r.DP, r.Blobs, r.ExitCode = wire.DeployDownloading, 0, dp, sums, nil
	})
	last, lastAt := 0, time.Now()
	src, err := Download(ctx, cache, mf, dps, DownloadOptions{Client: client, StallTimeout: m.c.StallTimeout,
		Progress: func(have, total int64) {
			pct := 100
			if total > 0 {
				pct = int(have * 100 / total)
			}
			if pct == last || (pct < last+10 && time.Since(lastAt) < 2*time.Second) {
				return
			}
			last, lastAt = pct, time.Now()
			m.update(d.ID, true, func(r *Record) { r.Percent = pct })
		}})
	if err != nil {
		return err
	}
	dir, err := PackageDir(m.c.Dir, mf.Name, mf.Version)
	if err != nil {
		return err
	}
	if err := Place(dir, mf, func(sum string) string { return BlobPath(cache, sum) }); err != nil {
		return err
	}
	install := d.Install && mf.Install != nil
	m.update(d.ID, true, func(r *Record) {
		r.State, r.Percent, r.DP, r.Error = wire.DeployDownloaded, 100, src, ""
		r.Final = !install
	})
	if !install {
		return nil
	}
	timeout, err := time.ParseDuration(mf.Install.Timeout)
	if err != nil { // manifest.Check refused it already
		return err
	}
	m.update(d.ID, true, func(r *Record) { r.State = wire.DeployInstalling })
	code, out, err := m.c.Installer.Run(ctx, InstallRun{
		Unit: "ibcm-install-" + unitName(d.ID), Dir: dir, Command: mf.Install.Command, Timeout: timeout,
		Env: []string{"IBCM_DEPLOYMENT=" + d.ID, "IBCM_PACKAGE=" + mf.Name, "IBCM_VERSION=" + mf.Version, "IBCM_PACKAGE_DIR=" + dir},
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err = fmt.Errorf("install: %w%s", err, lastLines(out))
		if errors.Is(err, ErrTimeout) || errors.Is(err, ErrKilled) {
			return &installError{code: -1, err: err}
		}
		return err
	}
	if !slices.Contains(manifest.SuccessCodes(mf.Install), code) {
		return &installError{code: code, err: fmt.Errorf("install: exit code %d%s", code, lastLines(out))}
	}
	m.update(d.ID, true, func(r *Record) {
		r.State, r.Final, r.Error = wire.DeployInstalled, true, ""
		c := code
		r.ExitCode = &c
	})
	return nil
}

// neededBlobs are the blobs of the unfinished deployments of the policy other than id.
func (m *Manager) neededBlobs(id string) map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := map[string]bool{}
	for _, r := range m.recs {
		if r.ID != id && r.InPolicy && !r.Final {
			for _, s := range r.Blobs {
				keep[s] = true
			}
		}
	}
	return keep
}

func lastLines(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return ""
	}
	if len(out) > 512 {
		out = "…" + out[len(out)-512:]
	}
	return "; output: " + out
}

// unitName keeps the characters of a deployment id a unit name may hold.
func unitName(id string) string {
	var b strings.Builder
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteRune(c)
		}
	}
	s := b.String()
	if len(s) > 64 {
		s = s[:64]
	}
	return fmt.Sprintf("%s-%d", s, time.Now().UnixMilli())
}
