package site

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
)

// Listener is one endpoint a running site serves.
type Listener struct {
	Role string // ca, ca-public, ...
	URL  string
}

// Listeners returns the endpoints the configured roles serve, as clients reach them.
func (c *Config) Listeners() []Listener {
	return []Listener{{Role: "ca", URL: c.CA.URL}, {Role: "ca-public", URL: c.CA.PublicURL}}
}

// maxConns bounds the open connections of each listener.
const maxConns = 8192

// Run serves the site's roles in this process until ctx is done, then shuts down cleanly.
// It prints one line per listener to out once that listener accepts connections.
func Run(ctx context.Context, cfg *Config, out io.Writer, log zerolog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	db, err := sitedb.Open(ctx, sitedb.Driver(cfg.Store.Driver), cfg.StoreDSN())
	if err != nil {
		return err
	}
	defer db.Close()

	authority, err := openCA(ctx, cfg, db, log.With().Str("component", "ca").Logger())
	if err != nil {
		return err
	}
	if err := authority.Prepare(ctx); err != nil {
		return err
	}
	revoked := &trust.RevokedSet{}
	if err := trust.WatchRevoked(ctx, db, revoked, 5*time.Minute, log.With().Str("component", "trust").Logger()); err != nil {
		return err
	}
	anchors, err := trust.LoadAnchors(ctx, db)
	if err != nil {
		return err
	}
	verifier := &trust.Verifier{Anchors: anchors, Revoked: revoked}

	cert, err := tls.LoadX509KeyPair(cfg.Path(cfg.CA.TLSCert), cfg.Path(cfg.CA.TLSKey))
	if err != nil {
		return fmt.Errorf("loading the CA role's TLS certificate (ca.tls_cert, ca.tls_key): %w", err)
	}
	servers := []*server{
		{role: "ca", addr: cfg.CA.Listen, url: cfg.CA.URL, handler: authority.Handler(verifier), tls: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequestClientCert, // verified per route, for clear errors
			MinVersion:   tls.VersionTLS12,
		}},
		{role: "ca-public", addr: cfg.CA.PublicListen, url: cfg.CA.PublicURL, handler: authority.PublicHandler()},
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		if err := s.listen(); err != nil {
			for _, o := range servers {
				o.close()
			}
			return err
		}
		fmt.Fprintf(out, "%-10s %s (listening on %s)\n", s.role, s.url, s.ln.Addr())
		go func() { errc <- s.serve(log.With().Str("component", s.role).Logger()) }()
	}
	go authority.Run(ctx, time.Minute)
	log.Info().Str("site", cfg.Site.Code).Msg("site up")

	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error().Err(err).Msg("a listener failed; shutting down")
	}
	shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	for _, s := range servers {
		_ = s.srv.Shutdown(shutdownCtx)
	}
	log.Info().Msg("site stopped")
	return err
}

// openCA loads the CA hierarchy from the files named in the config and opens the CA.
func openCA(ctx context.Context, cfg *Config, db *sitedb.DB, log zerolog.Logger) (*ca.CA, error) {
	h, err := LoadHierarchy(cfg)
	if err != nil {
		return nil, err
	}
	return ca.New(ctx, db, ca.Options{SiteCode: cfg.Site.Code, Hierarchy: h, PublicURL: cfg.CA.PublicURL,
		Validity: cfg.CA.Validity.byProfile(), CRLValidity: time.Duration(cfg.CA.CRLValidity), Log: log})
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

// server is one listener of the site with hardened HTTP timeouts and a connection limit.
type server struct {
	role, addr, url string
	handler         http.Handler
	tls             *tls.Config
	ln              net.Listener
	srv             *http.Server
}

func (s *server) listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("%s listener on %s: %w", s.role, s.addr, err)
	}
	ln = netutil.LimitListener(ln, maxConns)
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          nil,
	}
	return nil
}

func (s *server) serve(log zerolog.Logger) error {
	s.srv.ErrorLog = newStdLog(log)
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *server) close() {
	if s.ln != nil {
		_ = s.ln.Close()
	}
}
