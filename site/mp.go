package site

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/console"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/listener"
	"github.com/ibcm-project/ibcm/internal/logging"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/mp"
	"github.com/ibcm-project/ibcm/mp/dnspub"
	"github.com/ibcm-project/ibcm/remote/recording"
)

// openMP makes the management point's listeners (as its mode asks) and its background work:
// device events, OCSP stapling of its own certificate, and DNS publishing when configured.
func openMP(ctx context.Context, cfg *Config, db *sitedb.DB, verifier *trust.Verifier, log zerolog.Logger) ([]*listener.Server, []func(context.Context), *mp.MP, error) {
	cert, err := trust.NewStapledCert(cfg.Path(cfg.MP.TLSCert), cfg.Path(cfg.MP.TLSKey), log)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loading the MP role's TLS certificate (mp.tls_cert, mp.tls_key): %w", err)
	}
	o := mp.Options{ID: cfg.MP.ID, Mode: cfg.MP.Mode, MaxInFlight: cfg.MP.MaxInFlight, MaxChannelsPerDevice: cfg.MP.MaxChannelsPerDevice, Log: log,
		DefaultPolicy: mp.DefaultPolicy(cfg.Bootstrap()), SessionRetention: time.Duration(cfg.MP.SessionRetention),
		SecurityCodes: cfg.CA.SecurityCodes}
	if o.SiteKey, o.SiteChain, err = loadSiteKey(cfg.Path(cfg.MP.TLSCert), cfg.Path(cfg.MP.TLSKey)); err != nil {
		return nil, nil, nil, fmt.Errorf("loading the MP role's key for session tickets (mp.tls_cert, mp.tls_key): %w", err)
	}
	if o.AuditKey, err = loadAuditKey(cfg.Path(cfg.MP.AuditKey), log); err != nil {
		return nil, nil, nil, fmt.Errorf("mp.audit_key: %w", err)
	}
	o.OriginDPs = cfg.MP.OriginDPs
	if len(o.OriginDPs) == 0 && cfg.DP != nil && cfg.DP.Origin {
		o.OriginDPs = []string{cfg.DP.ID}
	}
	if cfg.MPIntranet() {
		o.IntranetURL = cfg.MP.IntranetURL
	}
	if cfg.MPInternet() {
		o.InternetURL = cfg.MP.InternetURL
	}
	// The web console and the MP each need the other: the console's backend is set to the
	// MP once it is made, before any listener serves.
	var cons *console.Console
	backend := &mpBackend{}
	if cfg.MP.ConsoleListen != "" {
		users, err := access.Open(ctx, db)
		if err != nil {
			return nil, nil, nil, err
		}
		cons, err = console.New(ctx, console.Options{DB: db, Access: users, Backend: backend, URL: cfg.MP.ConsoleURL,
			Log: logging.Component(log, "console")})
		if err != nil {
			return nil, nil, nil, err
		}
		o.ConsoleLinks = cons
	}
	m, err := mp.New(ctx, db, verifier, o)
	if err != nil {
		return nil, nil, nil, err
	}
	backend.MP = m
	if err := m.Start(ctx); err != nil {
		return nil, nil, nil, err
	}
	var servers []*listener.Server
	add := func(role, addr, url, location string) {
		servers = append(servers, &listener.Server{Role: role, Addr: addr, URL: url, MaxConns: cfg.MP.MaxConns,
			TLS: m.TLSConfig(cert.GetCertificate), Parkable: cfg.MP.ParksIdleChannels(), Configure: func(s *http.Server) { m.Configure(s, location) }})
	}
	if cfg.MPIntranet() {
		add("mp-intranet", cfg.MP.IntranetListen, cfg.MP.IntranetURL, wire.Intranet)
	}
	if cfg.MPInternet() {
		add("mp-internet", cfg.MP.InternetListen, cfg.MP.InternetURL, wire.Internet)
	}
	bg := []func(context.Context){func(ctx context.Context) { cert.Run(ctx, 30*time.Second) }}
	if cons != nil {
		// Server-only TLS with the MP's certificate: no client certificate is asked for
		// (a browser would prompt for one); the console's cookie session authenticates.
		servers = append(servers, &listener.Server{Role: "console", Addr: cfg.MP.ConsoleListen, URL: cfg.MP.ConsoleURL, MaxConns: maxConsoleConns,
			Handler: cons.Handler(), TLS: &tls.Config{GetCertificate: cert.GetCertificate, MinVersion: tls.VersionTLS12}})
		bg = append(bg, cons.Run)
	}
	if d := cfg.MP.DNS; d != nil && cfg.MPIntranet() {
		pub, err := newPublisher(cfg, logging.Component(log, "dnspub"))
		if err != nil {
			return nil, nil, nil, err
		}
		bg = append(bg, func(ctx context.Context) {
			if err := pub.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error().Err(err).Msg("DNS publishing stopped")
			}
		})
	}
	return servers, bg, m, nil
}

// maxConsoleConns bounds the open connections of the console listener.
const maxConsoleConns = 1024

// mpBackend is the console's backend: the MP, set once made (openMP).
type mpBackend struct{ *mp.MP }

// loadSiteKey reads the MP's site-server certificate chain and key: the MP signs session
// tickets with them and presents them to the other MPs when it forwards a relay leg.
func loadSiteKey(certFile, keyFile string) (crypto.Signer, []*x509.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: the key cannot sign", keyFile)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, err
		}
		chain = append(chain, c)
	}
	return signer, chain, nil
}

// loadAuditKey reads the site's audit private key, and makes it (0600) when a site made
// before audit keys existed has none yet.
func loadAuditKey(path string, log zerolog.Logger) ([]byte, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if key, _, err = recording.NewKey(); err != nil {
			return nil, err
		}
		if err := writeFile(path, key, 0o600); err != nil {
			return nil, err
		}
		log.Info().Str("path", path).Msg("made the site's audit key (session recordings are sealed to it)")
		return key, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := recording.PublicOf(key); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

func newPublisher(cfg *Config, log zerolog.Logger) (*dnspub.Publisher, error) {
	d := cfg.MP.DNS
	secret, err := os.ReadFile(cfg.Path(d.SecretFile))
	if err != nil {
		return nil, fmt.Errorf("mp.dns.secret_file: %w", err)
	}
	_, portStr, _ := net.SplitHostPort(hostPort(cfg.MP.IntranetURL))
	port, _ := strconv.Atoi(portStr)
	zone := strings.TrimSuffix(d.Zone, ".") + "."
	dc := dnspub.Config{Server: d.Server, Zone: zone, KeyName: d.KeyName, Algorithm: d.Algorithm,
		Secret: strings.TrimSpace(string(secret)), TTL: time.Duration(d.TTL)}
	if err := dc.Validate(); err != nil {
		return nil, err
	}
	return dnspub.New(dc, dnspub.Records(zone, strings.TrimSuffix(d.Target, ".")+".", uint16(port), cfg.Site.Code, d.CMName), log)
}
