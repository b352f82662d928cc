package mp

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The routes of the MP for the site's DPs (internal/wire/content.go): registration, the
// feed of revocations, blocks and assignment changes, the assignments, the DPs' package
// states, and the permission check of the users who upload to a DP.

// Limits of the DP routes.
const (
	defaultMaxDPFeeds = 1024 // feeds open on one MP (Options.MaxDPFeeds)
	maxFeedsPerDP     = 4    // feeds of one DP id on one MP: a reconnect may overlap a dying one
	feedBacklog       = 1024 // events waiting for one feed before it is cut as too slow
	feedWriteWait     = 30 * time.Second
	maxDPStateBody    = 4 << 20 // POST /v1/dp/state
	maxDPStatePkgs    = 10000
	maxDPURL          = 512
	maxDPError        = 1024
)

// dpIDRE is a DP id: the common name the CA wrote in its certificate (ca.CheckName).
var dpIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// dpHandler is a route for a DP; id is its certificate's common name.
type dpHandler func(w http.ResponseWriter, r *http.Request, id string) error

// dpOnly lets through a site-server certificate of role dp of this site only.
func (m *MP) dpOnly(h func(api.HandlerFunc) http.Handler, fn dpHandler) http.Handler {
	return h(func(w http.ResponseWriter, r *http.Request) error {
		p := peerOf(r)
		site := m.siteCode()
		if p.id.Kind != trust.KindServer || p.id.ID != "dp" || site == "" || p.id.Site != site {
			return api.Errorf(http.StatusForbidden, "not_a_dp", "this endpoint is for the site-server certificates of role dp of this site")
		}
		id := p.leaf.Subject.CommonName
		if !dpIDRE.MatchString(id) {
			return api.Errorf(http.StatusForbidden, "not_a_dp", "the DP certificate's common name %q is not a DP id", truncate(id))
		}
		return fn(w, r, id)
	})
}

// dpRoutes adds the routes for DPs.
func (m *MP) dpRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler) {
	mux.Handle("POST /v1/dp/register", m.dpOnly(h, m.handleDPRegister))
	mux.Handle("GET /v1/dp/feed", m.dpOnly(h, m.handleDPFeed))
	mux.Handle("GET /v1/dp/assignments", m.dpOnly(h, m.handleDPAssignments))
	mux.Handle("POST /v1/dp/state", m.dpOnly(h, m.handleDPState))
	mux.Handle("POST /v1/dp/authorize", m.dpOnly(h, m.handleDPAuthorize))
}

// checkDPURL checks a URL devices reach a DP at: https://host[:port], nothing else.
func checkDPURL(key, s string) error {
	u, err := url.Parse(s)
	if err != nil || len(s) > maxDPURL || !strings.HasPrefix(s, "https://") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return api.BadRequest("%s %q: want https://host[:port], at most %d characters", key, truncate(s), maxDPURL)
	}
	return nil
}

func (m *MP) handleDPRegister(w http.ResponseWriter, r *http.Request, id string) error {
	var reg wire.DPRegistration
	if err := api.Decode(w, r, &reg); err != nil {
		return err
	}
	if reg.ID != id {
		return api.Errorf(http.StatusForbidden, "dp_id_mismatch", "the registration names DP %q, the certificate is DP %q's", truncate(reg.ID), id)
	}
	switch reg.Mode {
	case wire.DPModeIntranet, wire.DPModeInternet, wire.DPModeBoth:
	default:
		return api.BadRequest("mode %q: intranet, internet or both", truncate(reg.Mode))
	}
	reg.IntranetURL = strings.TrimSuffix(reg.IntranetURL, "/")
	reg.InternetURL = strings.TrimSuffix(reg.InternetURL, "/")
	if reg.Mode != wire.DPModeInternet || reg.IntranetURL != "" {
		if err := checkDPURL("intranet_url", reg.IntranetURL); err != nil {
			return err
		}
	}
	if reg.Mode != wire.DPModeIntranet || reg.InternetURL != "" {
		if err := checkDPURL("internet_url", reg.InternetURL); err != nil {
			return err
		}
	}
	if reg.Mode == wire.DPModeInternet && reg.IntranetURL != "" || reg.Mode == wire.DPModeIntranet && reg.InternetURL != "" {
		return api.BadRequest("a DP in %s mode has no %s URL", reg.Mode, map[string]string{wire.DPModeInternet: "intranet", wire.DPModeIntranet: "internet"}[reg.Mode])
	}
	if reg.Origin && !slices.Contains(m.o.OriginDPs, id) {
		// A DP cannot make itself the upload target and everyone's pull source.
		return api.Errorf(http.StatusForbidden, "origin_not_allowed", "DP %q may not be an origin: only the DPs in the MP's mp.origin_dps (the site's own DP by default) are", id)
	}
	if reg.Priority < 0 || reg.Priority > 65535 {
		return api.BadRequest("priority %d: 0 to 65535 (lower is preferred)", reg.Priority)
	}
	if len(reg.Version) > 64 || strings.ContainsFunc(reg.Version, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		return api.BadRequest("version: at most 64 printable characters")
	}
	changed, err := m.registerDP(r.Context(), reg, trust.PublicKeyHash(peerOf(r).leaf))
	if err != nil {
		return err
	}
	if changed {
		m.log.Info().Str("dp_id", id).Str("mode", reg.Mode).Int("priority", reg.Priority).Bool("origin", reg.Origin).Msg("DP registered")
	}
	api.WriteJSON(w, http.StatusOK, wire.DPRegistered{Site: m.siteCode()})
	return nil
}

// registeredDP reads the calling DP, which must have registered.
func (m *MP) registeredDP(ctx context.Context, id string) (dpRow, error) {
	d, err := m.dp(ctx, id)
	if errors.Is(err, sql.ErrNoRows) {
		return dpRow{}, api.Errorf(http.StatusNotFound, "dp_not_registered", "DP %q has not registered: POST /v1/dp/register first", id)
	}
	return d, err
}

func (m *MP) handleDPAssignments(w http.ResponseWriter, r *http.Request, id string) error {
	d, err := m.registeredDP(r.Context(), id)
	if err != nil {
		return err
	}
	if err := m.touchDP(r.Context(), id); err != nil {
		return err
	}
	a, err := m.assignments(r.Context(), d)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, a)
	return nil
}

// decodeStrict reads one JSON object of at most limit bytes into v, as api.Decode does.
func decodeStrict(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "request body exceeds %d bytes", limit)
		}
		return api.BadRequest("reading the request body: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return api.BadRequest("request body is empty: a JSON object is required")
		}
		return api.BadRequest("request body is not valid JSON for this endpoint: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.BadRequest("request body has data after the JSON object")
	}
	return nil
}

// checkDPPackageState checks one reported state and fills Updated when left out.
func (m *MP) checkDPPackageState(i int, p *wire.DPPackageState) error {
	bad := func(format string, a ...any) error {
		return api.BadRequest("packages[%d]: %s", i, fmt.Sprintf(format, a...))
	}
	switch {
	case !manifest.ValidName(p.Name):
		return bad("name %q is not a package name", truncate(p.Name))
	case !manifest.ValidVersion(p.Version):
		return bad("version %q is not a package version", truncate(p.Version))
	case p.Percent < 0 || p.Percent > 100:
		return bad("percent %d: 0 to 100", p.Percent)
	case len(p.Error) > maxDPError || strings.ContainsRune(p.Error, 0):
		return bad("error: at most %d bytes, no NUL", maxDPError)
	}
	switch p.State {
	case wire.DPPending, wire.DPSyncing, wire.DPReady, wire.DPFailed:
	default:
		return bad("state %q: pending, syncing, ready or failed", truncate(p.State))
	}
	now := m.now()
	if p.Updated.IsZero() {
		p.Updated = now
	}
	if p.Updated.After(now.Add(5 * time.Minute)) {
		return bad("updated %s is in the future", p.Updated.UTC().Format(time.RFC3339))
	}
	return nil
}

func (m *MP) handleDPState(w http.ResponseWriter, r *http.Request, id string) error {
	var rep wire.DPStateReport
	if err := decodeStrict(w, r, &rep, maxDPStateBody); err != nil {
		return err
	}
	if len(rep.Packages) > maxDPStatePkgs {
		return api.BadRequest("packages: at most %d", maxDPStatePkgs)
	}
	for i := range rep.Packages {
		if err := m.checkDPPackageState(i, &rep.Packages[i]); err != nil {
			return err
		}
	}
	if _, err := m.registeredDP(r.Context(), id); err != nil {
		return err
	}
	if err := m.storeDPStates(r.Context(), id, rep.Packages); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleDPAuthorize answers whether a user (whose certificate a DP's handshake verified)
// holds a permission now: 204, else 403 with the reason.
func (m *MP) handleDPAuthorize(w http.ResponseWriter, r *http.Request, id string) error {
	var q wire.DPAuthorize
	if err := api.Decode(w, r, &q); err != nil {
		return err
	}
	if err := access.ValidUserName(q.User); err != nil {
		return api.BadRequest("user: %v", err)
	}
	perm, err := access.ParsePermission(q.Permission)
	if err != nil {
		return api.BadRequest("permission: %v", err)
	}
	// A DP asks only about uploads: it learns nothing of the users' other permissions.
	if perm != access.ManageContent {
		return api.Errorf(http.StatusForbidden, "not_for_dps", "a DP asks about %s only, not %s", access.ManageContent, perm)
	}
	serial, ok := new(big.Int).SetString(q.Serial, 10)
	if !ok || serial.Sign() <= 0 || len(q.Serial) > 64 {
		return api.BadRequest("serial %q: the user certificate's serial in decimal", truncate(q.Serial))
	}
	if m.isRevoked(serial) {
		return api.Errorf(http.StatusForbidden, "certificate_revoked", "certificate %s is revoked", wire.FormatSerial(serial))
	}
	// The serial must be a current admin certificate of that user, as the DP's handshake
	// saw it: a DP cannot ask about a user whose certificate it was not shown.
	if err := m.userCertificate(r.Context(), q.User, serial); err != nil {
		return err
	}
	g, err := m.access.Grants(r.Context(), q.User)
	if errors.Is(err, access.ErrUnknownUser) {
		return api.Errorf(http.StatusForbidden, "forbidden", "no user %q", q.User)
	}
	if err != nil {
		return err
	}
	if !g.Allows(perm) {
		return forbidden(q.User, perm) // a disabled user holds nothing
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// userCertificate checks that serial is a certificate the site's CA issued to user (an
// admin certificate naming the user) and valid now; else 403.
func (m *MP) userCertificate(ctx context.Context, user string, serial *big.Int) error {
	refused := api.Errorf(http.StatusForbidden, "forbidden", "certificate %s is not a current certificate of user %q", wire.FormatSerial(serial), user)
	var der []byte
	err := m.db.QueryRow(ctx, `SELECT der FROM certificates WHERE serial = ?`, serial.String()).Scan(&der)
	if errors.Is(err, sql.ErrNoRows) {
		return refused
	}
	if err != nil {
		return err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return refused
	}
	now := m.now()
	if id := trust.Identify(c); id.Kind != trust.KindUser || id.ID != user || now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return refused
	}
	return nil
}

// dpFeeds are the DP feeds open on this MP.
type dpFeeds struct {
	mu   sync.Mutex
	byDP map[string]map[*dpFeed]struct{}
	n    int
	max  int
}

// dpFeed is one open feed: events wait in ch for its handler; gone closes when it fell
// too far behind (the DP reconnects and gets a new snapshot).
type dpFeed struct {
	dp     string
	serial string // decimal serial of the DP's certificate: its revocation ends the feed
	ch     chan wire.DPEvent
	gone   chan struct{}
	once   sync.Once
}

func (f *dpFeed) send(ev wire.DPEvent) {
	select {
	case f.ch <- ev:
	default:
		f.once.Do(func() { close(f.gone) })
	}
}

func newDPFeeds(max int) *dpFeeds {
	return &dpFeeds{byDP: map[string]map[*dpFeed]struct{}{}, max: max}
}

func (fs *dpFeeds) add(dp, serial string) (*dpFeed, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.n >= fs.max {
		return nil, api.Errorf(http.StatusServiceUnavailable, "overloaded", "this MP has %d DP feeds open; retry after the Retry-After seconds", fs.n)
	}
	if len(fs.byDP[dp]) >= maxFeedsPerDP {
		return nil, api.Errorf(http.StatusTooManyRequests, "too_many_feeds", "DP %q has %d feeds open on this MP already", dp, maxFeedsPerDP)
	}
	f := &dpFeed{dp: dp, serial: serial, ch: make(chan wire.DPEvent, feedBacklog), gone: make(chan struct{})}
	if fs.byDP[dp] == nil {
		fs.byDP[dp] = map[*dpFeed]struct{}{}
	}
	fs.byDP[dp][f] = struct{}{}
	fs.n++
	return f, nil
}

func (fs *dpFeeds) remove(f *dpFeed) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if set := fs.byDP[f.dp]; set != nil {
		if _, ok := set[f]; ok {
			delete(set, f)
			fs.n--
		}
		if len(set) == 0 {
			delete(fs.byDP, f.dp)
		}
	}
}

// broadcast sends ev to the feeds of DP dp, or of every DP when dp is "". It never blocks.
func (fs *dpFeeds) broadcast(dp string, ev wire.DPEvent) {
	if fs == nil {
		return
	}
	fs.mu.Lock()
	var targets []*dpFeed
	for id, set := range fs.byDP {
		if dp != "" && id != dp {
			continue
		}
		for f := range set {
			targets = append(targets, f)
		}
	}
	fs.mu.Unlock()
	for _, f := range targets {
		f.send(ev)
	}
}

// count is how many feeds are open (tests).
func (fs *dpFeeds) count() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.n
}

// blockChanged tells the feeds that a device was blocked or unblocked.
func (m *MP) blockChanged(device string, blocked bool) {
	t := wire.DPEventUnblocked
	if blocked {
		t = wire.DPEventBlocked
	}
	m.feeds.broadcast("", wire.DPEvent{Type: t, Device: device})
}

// blockedList is every blocked device, sorted.
func (m *MP) blockedList() []string {
	m.mu.RLock()
	out := make([]string, 0, len(m.blocked))
	for id := range m.blocked {
		out = append(out, id)
	}
	m.mu.RUnlock()
	slices.Sort(out)
	return out
}

// handleDPFeed streams the DP feed: the snapshot of every revoked serial and blocked
// device, then each change as it happens, and a ping every dpPingEvery (which also keeps
// the DP live). The feed is subscribed before the snapshot is read, so no change falls
// between them. The answer is NDJSON, one wire.DPEvent per line, flushed line by line.
func (m *MP) handleDPFeed(w http.ResponseWriter, r *http.Request, id string) error {
	leaf := peerOf(r).leaf
	f, err := m.feeds.add(id, leaf.SerialNumber.String())
	if err != nil {
		return err
	}
	defer m.feeds.remove(f)
	ctx := r.Context()
	revoked, err := trust.LoadRevoked(ctx, m.db)
	if err != nil {
		return err
	}
	if revoked == nil {
		revoked = []string{}
	}
	slices.Sort(revoked)
	if err := m.touchDP(ctx, id); err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{}) // a stream: the server's read timeout is for requests
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	write := func(ev wire.DPEvent) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(feedWriteWait))
		return enc.Encode(ev) == nil && rc.Flush() == nil
	}
	if !write(wire.DPEvent{Type: wire.DPEventSnapshot, Revoked: revoked, Blocked: m.blockedList()}) {
		return nil
	}
	m.log.Info().Str("dp_id", id).Msg("DP feed open")
	defer m.log.Info().Str("dp_id", id).Msg("DP feed closed")
	ping := time.NewTicker(m.o.DPPingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.gone:
			m.log.Warn().Str("dp_id", id).Msg("DP feed too slow: cut (the DP reconnects for a new snapshot)")
			return nil
		case ev := <-f.ch:
			if !write(ev) {
				return nil
			}
			if ev.Type == wire.DPEventRevoked && ev.Serial == f.serial {
				return nil // the DP's own certificate
			}
		case <-ping.C:
			if !write(wire.DPEvent{Type: wire.DPEventPing}) {
				return nil
			}
			if err := m.touchDP(ctx, id); err != nil && ctx.Err() == nil {
				m.log.Warn().Err(err).Str("dp_id", id).Msg("recording that a DP is live")
			}
		}
	}
}
