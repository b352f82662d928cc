package site

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/listener"
	"github.com/ibcm-project/ibcm/internal/logging"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
)

// Roles a process can run.
const (
	RoleCA = "ca"
	RoleMP = "mp"
	RoleDP = "dp"
)

// Listener is one endpoint a running site serves.
type Listener struct {
	Role string // ca, ca-public, mp-intranet, mp-internet, console, dp-intranet, dp-internet
	URL  string
	MTLS bool // a client certificate is required in the handshake
}

// Listeners returns the endpoints of the given roles (all when none), as clients reach them.
func (c *Config) Listeners(roles ...string) []Listener {
	var out []Listener
	if has(roles, RoleCA) {
		out = append(out, Listener{Role: "ca", URL: c.CA.URL}, Listener{Role: "ca-public", URL: c.CA.PublicURL})
	}
	if has(roles, RoleMP) {
		if c.MPIntranet() {
			out = append(out, Listener{Role: "mp-intranet", URL: c.MP.IntranetURL, MTLS: true})
		}
		if c.MPInternet() {
			out = append(out, Listener{Role: "mp-internet", URL: c.MP.InternetURL, MTLS: true})
		}
		if c.MP.ConsoleListen != "" {
			out = append(out, Listener{Role: "console", URL: c.MP.ConsoleURL})
		}
	}
	if has(roles, RoleDP) && c.DP != nil {
		if c.DP.Intranet() {
			out = append(out, Listener{Role: "dp-intranet", URL: c.DP.IntranetURL, MTLS: true})
		}
		if c.DP.Internet() {
			out = append(out, Listener{Role: "dp-internet", URL: c.DP.InternetURL, MTLS: true})
		}
	}
	return out
}

func has(roles []string, role string) bool {
	if len(roles) == 0 {
		return true
	}
	for _, r := range roles {
		if r == role {
			return true
		}
	}
	return false
}

// maxConns bounds the open connections of each CA listener.
const maxConns = 8192

// Run serves the given roles (all when none) in this process until ctx is done, then shuts
// down cleanly. It prints one line per listener to out once that listener accepts
// connections.
func Run(ctx context.Context, cfg *Config, out io.Writer, log zerolog.Logger, roles ...string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	db, err := sitedb.Open(ctx, sitedb.Driver(cfg.Store.Driver), cfg.StoreDSN())
	if err != nil {
		return err
	}
	defer db.Close()
	// On SQLite, events stay in this process: refuse to be a second serving process on
	// the file, before anything is written or listened on.
	release, err := db.LockServing()
	if err != nil {
		return err
	}
	defer release()
	// One revoked set for every role of this process.
	verifier, err := newVerifier(ctx, db, log)
	if err != nil {
		return err
	}

	var servers []*listener.Server
	var background []func(context.Context) // run once the listeners are up
	var done []chan struct{}               // background work to wait for on shutdown
	var closers []func()                   // after the listeners and the background work
	if has(roles, RoleCA) {
		authority, err := openCA(ctx, cfg, db, logging.Component(log, "ca"))
		if err != nil {
			return err
		}
		if err := authority.Prepare(ctx); err != nil {
			return err
		}
		cert, err := tls.LoadX509KeyPair(cfg.Path(cfg.CA.TLSCert), cfg.Path(cfg.CA.TLSKey))
		if err != nil {
			return fmt.Errorf("loading the CA role's TLS certificate (ca.tls_cert, ca.tls_key): %w", err)
		}
		servers = append(servers,
			&listener.Server{Role: "ca", Addr: cfg.CA.Listen, URL: cfg.CA.URL, MaxConns: maxConns, Handler: authority.Handler(verifier), TLS: &tls.Config{
				Certificates: []tls.Certificate{cert},
				ClientAuth:   tls.RequestClientCert, // verified per route, for clear errors
				MinVersion:   tls.VersionTLS12,
			}},
			&listener.Server{Role: "ca-public", Addr: cfg.CA.PublicListen, URL: cfg.CA.PublicURL, MaxConns: maxConns, Handler: authority.PublicHandler()},
		)
		background = append(background, func(ctx context.Context) { authority.Run(ctx, time.Minute) })
	}
	if has(roles, RoleMP) {
		mps, bg, m, err := openMP(ctx, cfg, db, verifier, logging.Component(log, "mp"))
		if err != nil {
			return err
		}
		servers = append(servers, mps...)
		background = append(background, bg...)
		closers = append(closers, m.Close)
	}
	// The DP after the MP: its listeners open once the MP's are, and it reaches the MP
	// over loopback.
	if has(roles, RoleDP) {
		if cfg.DP == nil {
			if len(roles) == 0 {
				log.Info().Msg("no distribution point: site.yaml has no dp section (add `dp: {}` to run one with its defaults, and issue its certificate: ibcm ca issue --profile site-server --role dp --subject dp1)")
			}
		} else {
			d, err := openDP(cfg, logging.Component(log, "dp"))
			if err != nil {
				return err
			}
			servers = append(servers, d.Servers()...)
			background = append(background, d.Run)
		}
	}

	errc := make(chan error, len(servers))
	for _, s := range servers {
		if err := s.Listen(); err != nil {
			for _, o := range servers {
				o.Close()
			}
			return err
		}
		fmt.Fprintf(out, "%-12s %s (listening on %s)\n", s.Role, s.URL, s.Listener.Addr())
		go func() { errc <- s.Serve(logging.Component(log, s.Role)) }()
	}
	for _, fn := range background {
		ch := make(chan struct{})
		done = append(done, ch)
		go func() { defer close(ch); fn(ctx) }()
	}
	served := roles
	if len(served) == 0 {
		served = []string{RoleCA, RoleMP}
		if cfg.DP != nil {
			served = append(served, RoleDP)
		}
	}
	log.Info().Str("site", cfg.Site.Code).Strs("roles", served).Msg("site up")

	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error().Err(err).Msg("a listener failed; shutting down")
	}
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	for _, s := range servers {
		_ = s.HTTP.Shutdown(shutdownCtx)
	}
	for _, ch := range done {
		select {
		case <-ch:
		case <-shutdownCtx.Done():
		}
	}
	for _, c := range closers {
		c()
	}
	log.Info().Msg("site stopped")
	return err
}

// newVerifier loads the site's anchors and keeps a revoked set current for handshakes.
func newVerifier(ctx context.Context, db *sitedb.DB, log zerolog.Logger) (*trust.Verifier, error) {
	revoked := &trust.RevokedSet{}
	if err := trust.WatchRevoked(ctx, db, revoked, 5*time.Minute, logging.Component(log, "trust")); err != nil {
		return nil, err
	}
	anchors, err := trust.LoadAnchors(ctx, db)
	if err != nil {
		return nil, err
	}
	return &trust.Verifier{Anchors: anchors, Revoked: revoked}, nil
}

// openCA loads the CA hierarchy from the files named in the config and opens the CA.
func openCA(ctx context.Context, cfg *Config, db *sitedb.DB, log zerolog.Logger) (*ca.CA, error) {
	h, err := LoadHierarchy(cfg)
	if err != nil {
		return nil, err
	}
	password, err := cfg.Password() // LoadHierarchy read it too: it encrypts the content signer's key
	if err != nil {
		return nil, err
	}
	b := cfg.Bootstrap()
	return ca.New(ctx, db, ca.Options{SiteCode: cfg.Site.Code, Hierarchy: h, PublicURL: cfg.CA.PublicURL, Bootstrap: &b, KeyPassword: password,
		Validity: cfg.CA.Validity.byProfile(), CRLValidity: time.Duration(cfg.CA.CRLValidity), SecurityCodes: cfg.CA.SecurityCodes, Log: log})
}

// LoadHierarchy reads the root and issuing certificates and decrypts the issuing key.
func LoadHierarchy(cfg *Config) (*ca.Hierarchy, error) {
	read := func(key, path string) ([]byte, error) {
		b, err := os.ReadFile(cfg.Path(path))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		return b, nil
	}
	rootPEM, err := read("ca.root_cert", cfg.CA.RootCert)
	if err != nil {
		return nil, err
	}
	issPEM, err := read("ca.issuing_cert", cfg.CA.IssuingCert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read("ca.issuing_key", cfg.CA.IssuingKey)
	if err != nil {
		return nil, err
	}
	roots, err := ca.ParseCerts(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("ca.root_cert: %w", err)
	}
	iss, err := ca.ParseCerts(issPEM)
	if err != nil {
		return nil, fmt.Errorf("ca.issuing_cert: %w", err)
	}
	password, err := cfg.Password()
	if err != nil {
		return nil, err
	}
	key, err := ca.DecryptKey(keyPEM, password)
	if err != nil {
		return nil, fmt.Errorf("ca.issuing_key: %w", err)
	}
	if err := iss[0].CheckSignatureFrom(roots[0]); err != nil {
		return nil, fmt.Errorf("ca.issuing_cert is not signed by ca.root_cert: %w", err)
	}
	return &ca.Hierarchy{Root: roots[0], Issuing: iss[0], IssuingKey: key}, nil
}
