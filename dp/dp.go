package dp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/dp/library"
	"github.com/ibcm-project/ibcm/dp/pull"
	"github.com/ibcm-project/ibcm/internal/listener"
	"github.com/ibcm-project/ibcm/internal/logging"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Options configure New.
type Options struct {
	Settings Settings // defaulted, validated and resolved (Load, or a site's dp section)
	Log      zerolog.Logger
	Version  string           // reported at registration
	Now      func() time.Time // time.Now when nil
	Rand     *rand.Rand       // jitter of the MP link's backoff; seeded randomly when nil
	// MPDial, when set, is the host:port the MP link dials whatever mp_url's host is (a
	// site's DP reaches its MP over loopback; mp_url still names it for TLS).
	MPDial string
	// Pull tunes the puller of a DP that is not origin (tests shorten its waits); its
	// Library, Client, Trust, BytesPerSecond, Report and Log are the DP's.
	Pull pull.Options
	// OnEvent, when set, is called after each feed event took effect (tests).
	OnEvent func(wire.DPEvent)
}

// DP is one distribution point.
type DP struct {
	s       Settings
	log     zerolog.Logger
	now     func() time.Time
	version string
	onEvent func(wire.DPEvent)

	lib      *library.Library
	cert     tls.Certificate
	leaf     *x509.Certificate
	roots    []*x509.Certificate
	issuing  []*x509.Certificate // from the DP's own chain and the MP's bundle
	verifier atomic.Pointer[trust.Verifier]
	revoked  *trust.RevokedSet
	conns    connTracker
	shed     *listener.Shedder
	stateDir string

	mp     *http.Client
	mpBase string
	rnd    *rand.Rand
	rndMu  sync.Mutex

	mu          sync.RWMutex
	ready       bool                    // a snapshot of the feed is held (from the MP or the disk)
	heard       time.Time               // the feed's last line (or the saved state's time): see MaxFeedAge
	saved       time.Time               // when the feed's state was last written to the disk
	blocked     map[string]bool         // device ids
	serials     map[string]bool         // revoked (decimal), as the revoked set holds them, for the disk
	assign      wire.DPAssignments      // the last answer of /v1/dp/assignments
	assignFresh bool                    // assign came from the MP in this run (not from the disk)
	pkgs        map[string]*assignedPkg // name + "\x00" + version
	blobs       map[string]bool         // every blob an assigned package references

	puller  *pull.Puller // nil on an origin DP
	reports *reporter
	servers []*listener.Server
}

// assignedPkg is a package version distributed to this DP, its manifest checked.
type assignedPkg struct {
	pkg      wire.DPPackage
	manifest *wire.Manifest // nil when it did not verify
	err      error
}

// New makes a DP from its settings: it loads its certificate (whose common name must be
// the DP's id), the roots, the library and the state kept from its last run. It opens no
// listener and contacts no MP until Listen and Run.
func New(o Options) (*DP, error) {
	s := o.Settings
	if err := s.Validate("dp"); err != nil {
		return nil, err
	}
	d := &DP{s: s, log: o.Log, now: o.Now, version: o.Version, onEvent: o.OnEvent, revoked: &trust.RevokedSet{},
		blocked: map[string]bool{}, serials: map[string]bool{}, pkgs: map[string]*assignedPkg{}, blobs: map[string]bool{}, shed: listener.NewShedder(s.MaxInFlight), rnd: o.Rand}
	if d.now == nil {
		d.now = time.Now
	}
	if d.rnd == nil {
		d.rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	d.conns.init()
	var err error
	if d.cert, err = tls.LoadX509KeyPair(s.TLSCert, s.TLSKey); err != nil {
		return nil, fmt.Errorf("loading the DP's certificate (dp.tls_cert, dp.tls_key): %w", err)
	}
	chain, err := parseChain(d.cert.Certificate)
	if err != nil {
		return nil, fmt.Errorf("dp.tls_cert: %w", err)
	}
	d.leaf = chain[0]
	if d.leaf.Subject.CommonName != s.ID {
		return nil, fmt.Errorf("dp.id: %q, but the common name of dp.tls_cert is %q: the MP knows a DP by its certificate's name", s.ID, d.leaf.Subject.CommonName)
	}
	if id := trust.Identify(d.leaf); id.Kind != trust.KindServer || id.ID != "dp" || id.Site != s.SiteCode {
		return nil, fmt.Errorf("dp.tls_cert: not a site-server certificate of role dp of site %s (it names %s %q of site %q)", s.SiteCode, id.Kind, id.ID, id.Site)
	}
	for _, c := range chain[1:] {
		if c.IsCA && !selfSigned(c) {
			d.issuing = append(d.issuing, c)
		}
	}
	rootPEM, err := os.ReadFile(s.Roots)
	if err != nil {
		return nil, fmt.Errorf("dp.roots: %w", err)
	}
	if d.roots, err = parsePEM(rootPEM); err != nil || len(d.roots) == 0 {
		return nil, fmt.Errorf("dp.roots: no certificate in %s (%v)", s.Roots, err)
	}
	d.setAnchors()
	if _, err := d.verifier.Load().Verify(chain, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, fmt.Errorf("dp.tls_cert does not chain to dp.roots: %w", err)
	}
	if d.lib, err = library.Open(s.Library); err != nil {
		return nil, fmt.Errorf("dp.library: %w", err)
	}
	d.stateDir = filepath.Join(d.lib.Dir(), stateDirName)
	if err := os.MkdirAll(d.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("dp.library: %w", err)
	}
	d.revoked.OnRevoke(d.conns.closeSerial)
	if err := d.newMPClient(o.MPDial); err != nil {
		return nil, err
	}
	d.reports = newReporter(d)
	if !s.Origin {
		po := o.Pull
		po.Library, po.Client, po.Trust, po.BytesPerSecond = d.lib, d.contentClient(), d.manifestTrust(), s.Pull.BytesPerSecond
		po.Report, po.Log = d.reports.set, logging.Component(d.log, "pull")
		if po.Now == nil {
			po.Now = d.now
		}
		d.puller = pull.New(po)
	}
	if err := d.loadState(); err != nil {
		return nil, err
	}
	d.makeServers()
	return d, nil
}

// Library returns the DP's content store.
func (d *DP) Library() *library.Library { return d.lib }

// Servers returns the listeners of the DP's mode (a DP in internet mode has no intranet
// listener); the caller listens and serves them (Serve does both).
func (d *DP) Servers() []*listener.Server { return d.servers }

func (d *DP) makeServers() {
	add := func(role, addr, u string) {
		d.servers = append(d.servers, &listener.Server{Role: role, Addr: addr, URL: u, MaxConns: d.s.MaxConns, TLS: d.tlsConfig(),
			Handler: d.handler(role), Configure: func(srv *http.Server) {
				srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // bulk over HTTP/1.1, never h2
				srv.ConnState = d.conns.state
				srv.ConnContext = withConn // sendBlob waits on the socket (sendroom.go)
				// Bulk transfers move the deadlines along as bytes flow (deadlineWriter):
				// the whole-request bounds stop at the headers.
				srv.ReadTimeout, srv.WriteTimeout = 0, 0
			}})
	}
	if d.s.Intranet() {
		add("dp-intranet", d.s.IntranetListen, d.s.IntranetURL)
	}
	if d.s.Internet() {
		add("dp-internet", d.s.InternetListen, d.s.InternetURL)
	}
}

// Serve listens on the DP's listeners, prints one line per listener to out once it
// accepts connections, runs the DP (Run) and shuts down when ctx ends.
func (d *DP) Serve(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, s := range d.servers {
		if err := s.Listen(); err != nil {
			for _, o := range d.servers[:i] {
				o.Close()
			}
			return err
		}
		fmt.Fprintf(out, "%-12s %s (listening on %s)\n", s.Role, s.URL, s.Listener.Addr())
	}
	errc := make(chan error, len(d.servers))
	for _, s := range d.servers {
		go func() { errc <- s.Serve(logging.Component(d.log, s.Role)) }()
	}
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		d.log.Error().Err(err).Msg("a listener failed; shutting down")
	}
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	for _, s := range d.servers {
		_ = s.HTTP.Shutdown(shutdownCtx)
	}
	select {
	case <-done:
	case <-shutdownCtx.Done():
	}
	return err
}

// Run keeps the DP's link to its MP (registration, the feed, assignments, state reports),
// runs the puller and validates the library every validate_interval, until ctx ends.
func (d *DP) Run(ctx context.Context) {
	var wg sync.WaitGroup
	run := func(fn func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	run(d.linkMP)
	run(d.reports.run)
	run(d.validateLoop)
	if d.puller != nil {
		run(func(ctx context.Context) { _ = d.puller.Run(ctx) })
	}
	wg.Wait()
}

// validateLoop re-hashes the library every validate_interval: a bad blob is quarantined,
// the puller woken to fetch it again, and its packages reported.
func (d *DP) validateLoop(ctx context.Context) {
	t := time.NewTicker(time.Duration(d.s.ValidateInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Validate(ctx)
			d.Collect(ctx)
		}
	}
}

// Validate re-hashes the library once (validateLoop calls it on schedule) and returns the
// quarantined blobs.
func (d *DP) Validate(ctx context.Context) []string {
	bad, err := d.lib.Validate(ctx)
	if err != nil && ctx.Err() == nil {
		d.log.Error().Err(err).Msg("validating the library")
	}
	for _, sum := range bad {
		d.log.Warn().Str("sha256", sum).Msg("a blob did not match its hash: quarantined")
	}
	if len(bad) > 0 {
		if d.puller != nil {
			d.puller.Wake()
		}
		d.reportLocal()
	}
	return bad
}

// Collect removes the blobs no assigned package version references, once they are older
// than library.DefaultGrace (the MP assigns an origin DP every registered package version,
// so an upload not yet registered survives a day there). A DP that has not heard from its
// MP what is assigned to it in this run collects nothing.
func (d *DP) Collect(ctx context.Context) []string {
	d.mu.RLock()
	fresh, blobs := d.assignFresh, d.blobs
	d.mu.RUnlock()
	if !fresh {
		return nil
	}
	removed, err := d.lib.Collect(ctx, func(sum string) bool { return blobs[sum] }, 0)
	if err != nil && ctx.Err() == nil {
		d.log.Error().Err(err).Msg("collecting unreferenced blobs")
	}
	if len(removed) > 0 {
		d.log.Info().Int("blobs", len(removed)).Msg("removed blobs no package distributed here references")
	}
	return removed
}

// setAnchors builds the verifier from the roots and the issuing CAs known now.
func (d *DP) setAnchors() {
	d.verifier.Store(&trust.Verifier{Anchors: trust.NewAnchors(d.roots, d.issuing), Revoked: d.revoked, Now: d.now})
}

func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}

func parsePEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func selfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil && string(c.RawIssuer) == string(c.RawSubject)
}

// newMPClient makes the client of the MP link: mutual TLS with the DP's certificate,
// trusting the site's roots.
func (d *DP) newMPClient(dial string) error {
	u, err := url.Parse(d.s.MPURL)
	if err != nil {
		return fmt.Errorf("dp.mp_url: %w", err)
	}
	d.mpBase = u.Scheme + "://" + u.Host
	pool := x509.NewCertPool()
	for _, r := range d.roots {
		pool.AddCert(r)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{d.cert}, RootCAs: pool, MinVersion: tls.VersionTLS12,
			// Only a management point of this site: another site server valid for the
			// same name (a DP) would decide who is revoked and what is assigned here.
			VerifyConnection: func(cs tls.ConnectionState) error {
				leaf := cs.PeerCertificates[0]
				if id := trust.Identify(leaf); id.Kind != trust.KindServer || id.ID != "mp" || id.Site != d.s.SiteCode {
					return fmt.Errorf("dp.mp_url: the server presents %s %q of site %q, not a management point of site %s", id.Kind, id.ID, id.Site, d.s.SiteCode)
				}
				if d.revoked.Contains(leaf.SerialNumber) {
					return fmt.Errorf("dp.mp_url: the server's certificate %s is revoked", wire.FormatSerial(leaf.SerialNumber))
				}
				return nil
			}},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		ForceAttemptHTTP2:     false,
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr.DialContext = dialer.DialContext
	if dial != "" {
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, dial)
		}
	}
	d.mp = &http.Client{Transport: tr}
	return nil
}

// contentClient is the client a pull-DP fetches from other DPs with.
func (d *DP) contentClient() *http.Client {
	pool := x509.NewCertPool()
	for _, r := range d.roots {
		pool.AddCert(r)
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:       &tls.Config{Certificates: []tls.Certificate{d.cert}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   8,
	}}
}

type x509Cert = x509.Certificate

func newPool(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}
