package dp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/pull"
	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// stateDirName is the directory below the library where the DP keeps what it learnt from
// its MP (0700, files 0600), so that it serves after a restart with the MP down.
const stateDirName = "state"

const (
	feedFile        = "feed.json"
	assignmentsFile = "assignments.json"
)

// feedIdle ends a feed that sent nothing for this long (the MP pings every 15 s).
var feedIdle = 45 * time.Second

// Backoff of the MP link after a failure: jittered, doubling from min to max.
var backoffMin, backoffMax = time.Second, time.Minute

// mpCall sends one request to the MP; out, when not nil, gets the JSON answer of a 2xx. It
// returns the status (0 when no answer came) and an error for anything but 2xx.
func (d *DP) mpCall(ctx context.Context, method, path string, body io.Reader, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, d.mpBase+path, body)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.mp.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e wire.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			return resp.StatusCode, fmt.Errorf("%s %s: HTTP %d %s: %s", method, path, resp.StatusCode, e.Error.Code, e.Error.Message)
		}
		return resp.StatusCode, fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out != nil {
		dec := json.NewDecoder(io.LimitReader(resp.Body, wire.MaxDPEventLine))
		if err := dec.Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

func (d *DP) mpJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := d.mpCall(ctx, method, path, body, out)
	return err
}

// linkMP keeps the DP registered and its feed open, reconnecting with jittered backoff.
func (d *DP) linkMP(ctx context.Context) {
	wait := backoffMin
	for ctx.Err() == nil {
		start := time.Now()
		err := d.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 2*backoffMax {
			wait = backoffMin // the link was up for a while: start over
		}
		d.log.Warn().Err(err).Dur("retry_in", wait).Msg("link to the management point lost")
		d.rndMu.Lock()
		j := time.Duration(d.rnd.Int64N(int64(wait)/2 + 1))
		d.rndMu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait/2 + j):
		}
		if wait *= 2; wait > backoffMax {
			wait = backoffMax
		}
	}
}

// session registers, refreshes the anchors and the assignments, then follows the feed until
// it breaks.
func (d *DP) session(ctx context.Context) error {
	reg := wire.DPRegistration{ID: d.s.ID, Mode: d.s.Mode, Priority: d.s.Priority, Origin: d.s.Origin, Version: d.version}
	if d.s.Intranet() {
		reg.IntranetURL = d.s.IntranetURL
	}
	if d.s.Internet() {
		reg.InternetURL = d.s.InternetURL
	}
	var ok wire.DPRegistered
	if err := d.mpJSON(ctx, http.MethodPost, "/v1/dp/register", reg, &ok); err != nil {
		return fmt.Errorf("registering: %w", err)
	}
	if ok.Site != "" && ok.Site != d.s.SiteCode {
		return fmt.Errorf("the management point is of site %s, this DP of %s (dp.site_code)", ok.Site, d.s.SiteCode)
	}
	d.refreshBundle(ctx)
	sessionCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	refetch := make(chan struct{}, 1)
	refetch <- struct{}{} // at start
	go func() {
		for {
			select {
			case <-sessionCtx.Done():
				return
			case <-refetch:
				if err := d.fetchAssignments(sessionCtx); err != nil && sessionCtx.Err() == nil {
					d.log.Warn().Err(err).Msg("fetching assignments")
				}
			}
		}
	}()
	d.log.Info().Str("mp", d.mpBase).Msg("registered with the management point")
	return d.followFeed(sessionCtx, func() {
		select {
		case refetch <- struct{}{}:
		default:
		}
	})
}

// refreshBundle adds the issuing CAs the MP's bundle names to the anchors (the site's
// roots stay those of dp.roots).
func (d *DP) refreshBundle(ctx context.Context) {
	var b wire.Bundle
	if err := d.mpJSON(ctx, http.MethodGet, "/v1/bundle", nil, &b); err != nil {
		d.log.Debug().Err(err).Msg("reading the site's CA bundle")
		return
	}
	certs, err := parsePEM([]byte(b.Roots))
	if err != nil {
		return
	}
	changed := false
	for _, c := range certs {
		if !c.IsCA || selfSigned(c) || containsCert(d.issuing, c) {
			continue
		}
		d.issuing = append(d.issuing, c)
		changed = true
	}
	if changed {
		d.setAnchors()
	}
}

func containsCert(list []*x509Cert, c *x509Cert) bool {
	for _, have := range list {
		if have.Equal(c) {
			return true
		}
	}
	return false
}

// followFeed reads the NDJSON feed, applying each event, until it breaks or goes quiet.
func (d *DP) followFeed(ctx context.Context, assignmentsChanged func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.mpBase+"/v1/dp/feed", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := d.mp.Do(req)
	if err != nil {
		return fmt.Errorf("opening the feed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("opening the feed: HTTP %d", resp.StatusCode)
	}
	idle := time.AfterFunc(feedIdle, cancel)
	defer idle.Stop()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	first := true
	for {
		line, err := readLine(br, wire.MaxDPEventLine)
		if err != nil {
			if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("the feed sent nothing for %s", feedIdle)
			}
			return fmt.Errorf("reading the feed: %w", err)
		}
		idle.Reset(feedIdle)
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var ev wire.DPEvent
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			return fmt.Errorf("the feed sent a line that is not an event: %w", err)
		}
		if first && ev.Type != wire.DPEventSnapshot {
			return fmt.Errorf("the feed did not start with a snapshot (got %q)", ev.Type)
		}
		first = false
		if ev.Type == wire.DPEventAssignments {
			assignmentsChanged()
		}
		d.apply(ev)
	}
}

// readLine reads one line of at most max bytes (without its newline).
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > max+1 {
			return nil, fmt.Errorf("a line longer than %d bytes", max)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return bytes.TrimRight(line, "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			if len(line) > 0 && errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// apply makes one feed event take effect: revoked serials and blocked devices are refused
// and their live connections closed at once.
func (d *DP) apply(ev wire.DPEvent) {
	persist := true
	d.mu.Lock()
	d.heard = d.now()
	d.mu.Unlock()
	switch ev.Type {
	case wire.DPEventSnapshot:
		blocked := make(map[string]bool, len(ev.Blocked))
		for _, id := range ev.Blocked {
			blocked[id] = true
		}
		serials := make(map[string]bool, len(ev.Revoked))
		for _, sn := range ev.Revoked {
			serials[sn] = true
		}
		d.mu.Lock()
		d.blocked, d.serials = blocked, serials
		d.ready = true
		d.mu.Unlock()
		d.revoked.Replace(ev.Revoked) // closes the connections of newly revoked serials
		for id := range blocked {
			d.conns.closeDevice(id)
		}
	case wire.DPEventRevoked:
		if ev.Serial != "" {
			d.mu.Lock()
			d.serials[ev.Serial] = true
			d.mu.Unlock()
			d.revoked.Add(ev.Serial)
			d.log.Info().Str("serial", wire.FormatDecimalSerial(ev.Serial)).Msg("certificate revoked: refused from now on")
		}
	case wire.DPEventBlocked:
		if ev.Device != "" {
			d.mu.Lock()
			d.blocked[ev.Device] = true
			d.mu.Unlock()
			d.conns.closeDevice(ev.Device)
			d.log.Info().Str("device_id", ev.Device).Msg("device blocked: refused from now on")
		}
	case wire.DPEventUnblocked:
		d.mu.Lock()
		delete(d.blocked, ev.Device)
		d.mu.Unlock()
	default: // ping, assignments, and types of later versions
		d.mu.RLock()
		persist = d.now().Sub(d.saved) > time.Hour // the time heard, for a restart with the MP down
		d.mu.RUnlock()
	}
	if persist {
		if err := d.saveFeed(); err != nil {
			d.log.Error().Err(err).Msg("keeping the feed's state on disk")
		}
	}
	if d.onEvent != nil {
		d.onEvent(ev)
	}
}

// feedState is what the DP keeps of the feed on disk.
type feedState struct {
	Revoked []string  `json:"revoked"`
	Blocked []string  `json:"blocked"`
	Saved   time.Time `json:"saved"`
}

func (d *DP) saveFeed() error {
	d.mu.RLock()
	st := feedState{Revoked: make([]string, 0, len(d.serials)), Blocked: make([]string, 0, len(d.blocked)), Saved: d.heard.UTC()}
	for id := range d.blocked {
		st.Blocked = append(st.Blocked, id)
	}
	for sn := range d.serials {
		st.Revoked = append(st.Revoked, sn)
	}
	d.mu.RUnlock()
	sort.Strings(st.Blocked)
	sort.Strings(st.Revoked)
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(d.stateDir, feedFile), b, 0o600); err != nil {
		return err
	}
	d.mu.Lock()
	d.saved = d.now()
	d.mu.Unlock()
	return nil
}

// loadState reads what the last run kept: with a feed snapshot on disk the DP serves
// before its MP answers.
func (d *DP) loadState() error {
	b, err := os.ReadFile(filepath.Join(d.stateDir, feedFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading the DP's saved state: %w", err)
	default:
		var st feedState
		if err := json.Unmarshal(b, &st); err != nil {
			d.log.Warn().Err(err).Msg("the saved feed state is unreadable: waiting for the MP")
			break
		}
		d.revoked.Replace(st.Revoked)
		for _, sn := range st.Revoked {
			d.serials[sn] = true
		}
		for _, id := range st.Blocked {
			d.blocked[id] = true
		}
		d.ready, d.heard, d.saved = true, st.Saved, st.Saved
		if age := d.now().Sub(st.Saved); age > MaxFeedAge {
			d.log.Warn().Time("saved", st.Saved).Dur("max_age", MaxFeedAge).Msg("the feed state kept on disk is too old to serve on: waiting for the MP")
		}
		d.log.Info().Int("revoked", len(st.Revoked)).Int("blocked", len(st.Blocked)).Time("saved", st.Saved).Msg("serving from the feed state kept on disk until the MP answers")
	}
	b, err = os.ReadFile(filepath.Join(d.stateDir, assignmentsFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading the DP's saved assignments: %w", err)
	default:
		var a wire.DPAssignments
		if err := json.Unmarshal(b, &a); err != nil {
			d.log.Warn().Err(err).Msg("the saved assignments are unreadable: waiting for the MP")
			break
		}
		d.setAssignments(a)
	}
	return nil
}

// fetchAssignments asks the MP what is distributed to this DP, keeps it (memory and disk),
// hands it to the puller and reports the state of each package.
func (d *DP) fetchAssignments(ctx context.Context) error {
	var a wire.DPAssignments
	if err := d.mpJSON(ctx, http.MethodGet, "/v1/dp/assignments", nil, &a); err != nil {
		return err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(d.stateDir, assignmentsFile), b, 0o600); err != nil {
		d.log.Error().Err(err).Msg("keeping the assignments on disk")
	}
	d.setAssignments(a)
	d.mu.Lock()
	d.assignFresh = true
	d.mu.Unlock()
	return nil
}

// setAssignments checks each package's signed manifest (the CA's signature, the pinned
// hash) and makes the packages the DP serves, pulls and reports.
func (d *DP) setAssignments(a wire.DPAssignments) {
	t := d.manifestTrust()
	pkgs := map[string]*assignedPkg{}
	blobs := map[string]bool{}
	var good []wire.DPPackage
	for _, p := range a.Packages {
		ap := &assignedPkg{pkg: p}
		sm, err := manifest.ParseSigned(p.Manifest)
		if err == nil {
			ap.manifest, err = manifest.Verify(sm, t, p.ManifestSHA256)
		}
		if err == nil && (ap.manifest.Name != p.Name || ap.manifest.Version != p.Version) {
			ap.manifest, err = nil, fmt.Errorf("the manifest is of %s %s", ap.manifest.Name, ap.manifest.Version)
		}
		if err != nil {
			ap.err = fmt.Errorf("the signed manifest does not verify: %w", err)
			d.log.Error().Err(err).Str("package", p.Name).Str("version", p.Version).Msg("refusing an assigned package")
		} else {
			for _, f := range ap.manifest.Files {
				blobs[f.SHA256] = true
			}
			good = append(good, p)
		}
		pkgs[pkgKey(p.Name, p.Version)] = ap
	}
	d.mu.Lock()
	d.assign, d.pkgs, d.blobs = a, pkgs, blobs
	d.mu.Unlock()
	if d.puller != nil {
		d.puller.Set(good, d.pullSources(a.DPs))
	}
	d.reportLocal()
}

// pullSources resolves pull.sources (by id through the registered DPs), or the origin DPs
// when none are configured. A DP reaches another by its intranet URL when it has one.
func (d *DP) pullSources(dps []wire.DPInfo) []pull.Source {
	urlOf := func(i wire.DPInfo) string {
		if i.IntranetURL != "" && (d.s.Intranet() || i.InternetURL == "") {
			return i.IntranetURL
		}
		return i.InternetURL
	}
	var out []pull.Source
	if len(d.s.Pull.Sources) == 0 {
		for _, i := range dps {
			if i.Origin && i.ID != d.s.ID {
				out = append(out, pull.Source{URL: urlOf(i), Priority: i.Priority})
			}
		}
		return out
	}
	for _, s := range d.s.Pull.Sources {
		if s.URL != "" {
			out = append(out, pull.Source{URL: strings.TrimSuffix(s.URL, "/"), Priority: s.Priority})
			continue
		}
		for _, i := range dps {
			if i.ID == s.ID && i.ID != d.s.ID {
				out = append(out, pull.Source{URL: urlOf(i), Priority: s.Priority})
			}
		}
	}
	return out
}

func (d *DP) manifestTrust() manifest.Trust {
	pool := newPool(d.roots)
	return manifest.Trust{Roots: pool, SiteCode: d.s.SiteCode, Revoked: func(c *x509Cert) bool { return d.revoked.Contains(c.SerialNumber) }, Now: d.now}
}

// reportLocal sets the state of every assigned package the DP does not pull from what the
// library holds: ready when every file is there, else pending (an origin waits for
// uploads), or failed when its manifest did not verify. A pull-DP's puller reports the
// packages it handles.
func (d *DP) reportLocal() {
	d.mu.RLock()
	var states []wire.DPPackageState
	for _, p := range d.pkgs {
		st := wire.DPPackageState{Name: p.pkg.Name, Version: p.pkg.Version, Updated: d.now().UTC()}
		switch {
		case p.err != nil:
			st.State, st.Error = wire.DPFailed, p.err.Error()
		case d.puller != nil:
			continue
		default:
			var have, total int64
			for _, f := range p.manifest.Files {
				total += f.Size
				if d.lib.Has(f.SHA256) {
					have += f.Size
				}
			}
			st.State, st.Percent = wire.DPPending, percent(have, total)
			if have == total {
				st.State, st.Percent = wire.DPReady, 100
			}
		}
		states = append(states, st)
	}
	d.mu.RUnlock()
	d.reports.replace(states, d.puller == nil)
}

func percent(have, total int64) int {
	if total <= 0 {
		return 100
	}
	return int(have * 100 / total)
}

// reporter sends the DP's per-package state to the MP (POST /v1/dp/state) when it
// changed, at most once a second.
type reporter struct {
	d       *DP
	mu      sync.Mutex
	states  map[string]wire.DPPackageState
	dirty   bool
	changed chan struct{}
}

func newReporter(d *DP) *reporter {
	return &reporter{d: d, states: map[string]wire.DPPackageState{}, changed: make(chan struct{}, 1)}
}

// set records one package's state (the puller's Report).
func (r *reporter) set(st wire.DPPackageState) {
	r.mu.Lock()
	r.states[pkgKey(st.Name, st.Version)] = st
	r.dirty = true
	r.mu.Unlock()
	r.kick()
}

// replace records states computed by the DP; with all, packages no longer assigned are
// dropped too.
func (r *reporter) replace(states []wire.DPPackageState, all bool) {
	r.mu.Lock()
	if all {
		r.states = map[string]wire.DPPackageState{}
	}
	for _, st := range states {
		r.states[pkgKey(st.Name, st.Version)] = st
	}
	if !all { // drop what is no longer assigned
		r.d.mu.RLock()
		for k := range r.states {
			if r.d.pkgs[k] == nil {
				delete(r.states, k)
			}
		}
		r.d.mu.RUnlock()
	}
	r.dirty = true
	r.mu.Unlock()
	r.kick()
}

func (r *reporter) kick() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *reporter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
		}
		r.mu.Lock()
		if !r.dirty {
			r.mu.Unlock()
			continue
		}
		rep := wire.DPStateReport{Packages: make([]wire.DPPackageState, 0, len(r.states))}
		for _, st := range r.states {
			rep.Packages = append(rep.Packages, st)
		}
		r.dirty = false
		r.mu.Unlock()
		sort.Slice(rep.Packages, func(i, j int) bool {
			return pkgKey(rep.Packages[i].Name, rep.Packages[i].Version) < pkgKey(rep.Packages[j].Name, rep.Packages[j].Version)
		})
		if err := r.d.mpJSON(ctx, http.MethodPost, "/v1/dp/state", rep, nil); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.d.log.Debug().Err(err).Msg("reporting package state (will retry)")
			r.mu.Lock()
			r.dirty = true
			r.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			r.kick()
			continue
		}
		select { // at most one report a second
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
