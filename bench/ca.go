package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

var caSuite = Suite{
	Name:  "ca",
	Title: "certificates issued per second (ECDSA P-256), store in the loop",
	Run:   runCA,
}

var (
	caStores  = flag.String("ca-stores", "sqlite,postgres,postgres-durable", "ca suite: stores to run the enroll API on, comma-separated (postgres: fsync off; postgres-durable: fsync and synchronous_commit on)")
	caClients = flag.String("ca-clients", "8,64", "ca suite: clients in flight against the enroll API, comma-separated (-concurrency overrides)")
	caTokens  = flag.String("ca-tokens", "shared,per-client", "ca suite: token modes, comma-separated: shared (one bulk token) or per-client (one bulk token per client)")
)

const (
	caTarget = 1000 // certificates/s end to end, on each store (DESIGN.md §12)

	// caRawShare is the share of raw signing the enroll API must reach on every store,
	// token mode and number of clients: a bulk token for 500 devices must not serialize
	// them.
	caRawShare = 0.10

	// csrPool is how many distinct CSRs the clients send round-robin. The CA gives every
	// enrollment a new serial, so a CSR may come again (checked before each run).
	csrPool = 1024
)

// caStore is a store the enroll API runs on.
type caStore struct{ name, label string }

var caStoreNames = map[string]string{
	"sqlite":           "sqlite",
	"postgres":         "postgres fsync off",
	"postgres-durable": "postgres durable",
}

func runCA(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "ca"}
	var stores []caStore
	for _, s := range strings.Split(*caStores, ",") {
		label, ok := caStoreNames[s]
		if !ok {
			return res, fmt.Errorf("-ca-stores: %q is not sqlite, postgres or postgres-durable", s)
		}
		stores = append(stores, caStore{s, label})
	}
	var clients []int
	if o.Concurrency > 0 {
		clients = []int{o.Concurrency}
	} else {
		for _, c := range strings.Split(*caClients, ",") {
			n, err := strconv.Atoi(c)
			if err != nil || n < 1 || n > 1000 {
				return res, fmt.Errorf("-ca-clients: %q is not a number of clients between 1 and 1000", c)
			}
			clients = append(clients, n)
		}
	}
	modes := strings.Split(*caTokens, ",")
	for _, m := range modes {
		if m != "shared" && m != "per-client" {
			return res, fmt.Errorf("-ca-tokens: %q is not shared or per-client", m)
		}
	}

	fmt.Fprintf(progress, "ca: raw x509.CreateCertificate on %d goroutines\n", runtime.GOMAXPROCS(0))
	raw, err := rawIssue(ctx, o)
	if err != nil {
		return res, fmt.Errorf("raw x509.CreateCertificate: %w", err)
	}
	res.Rows = append(res.Rows, raw)

	fmt.Fprintf(progress, "ca: making %d CSRs\n", csrPool)
	csrs, err := makeCSRs(csrPool)
	if err != nil {
		return res, err
	}

	servers := map[bool]*pgtest.Server{} // by durable
	defer func() {
		for _, pg := range servers {
			_ = pg.Stop()
		}
	}()
	for _, store := range stores {
		dsn := ""
		if durable := store.name == "postgres-durable"; strings.HasPrefix(store.name, "postgres") {
			if servers[durable] == nil {
				fmt.Fprintf(progress, "ca: starting a throwaway PostgreSQL (%s)\n", store.label)
				var opts []pgtest.Option
				if durable {
					opts = append(opts, pgtest.Durable())
				}
				pg, err := pgtest.Start(ctx, opts...)
				if err != nil {
					return res, err
				}
				servers[durable] = pg
			}
			if dsn, err = servers[durable].NewDatabase(ctx); err != nil {
				return res, err
			}
		}
		rows, err := enrollRows(ctx, o, store, dsn, clients, modes, csrs, progress)
		if err != nil {
			return res, fmt.Errorf("enroll API on %s: %w", store.label, err)
		}
		res.Rows = append(res.Rows, rows...)
	}
	res.Notes = append(res.Notes,
		fmt.Sprintf("raw: goroutines = GOMAXPROCS = %d, P-256 leaf signed by a P-256 issuing key, no store, no TLS", runtime.GOMAXPROCS(0)),
		fmt.Sprintf("enroll API: POST /v1/enroll, each client on its own kept-alive HTTPS/1.1 connection, in this process (they share the CPUs with the site)"),
		fmt.Sprintf("enroll API: target %.0f%% of raw signing on every store, token mode and number of clients; each row alternates with raw signing in %d rounds (enroll -duration/%d after %s warm-up, raw half that), its ratio is to that raw rate; DESIGN.md §12 asks >= %d/s", 100*caRawShare, mpRounds, mpRounds, o.Warmup/2, caTarget),
		fmt.Sprintf("enroll API: shared = one bulk token for every client; per-client = one bulk token per client; %d CSRs round-robin (the CA accepted a CSR twice with two serials)", csrPool),
		"postgres: throwaway servers from internal/pgtest, one with fsync, synchronous_commit and full_page_writes off, one durable (all three on, every commit flushed to the disk)",
	)
	return res, nil
}

// rawIssue measures x509.CreateCertificate alone: the ceiling of issuance on this machine.
func rawIssue(ctx context.Context, o Options) (Row, error) {
	sign, err := rawSigner()
	if err != nil {
		return Row{}, err
	}
	m, err := measure(ctx, o, runtime.GOMAXPROCS(0), sign)
	if err != nil {
		return Row{}, err
	}
	return Row{Name: "raw x509.CreateCertificate", Value: m.rate(), Unit: "certs/s", Count: m.count}, nil
}

// rawSigner returns an operation that signs one P-256 leaf with a P-256 issuing key.
func rawSigner() (func(context.Context, int) error, error) {
	issuerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	issuerTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bench issuing CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	issuerDER, err := x509.CreateCertificate(rand.Reader, issuerTmpl, issuerTmpl, &issuerKey.PublicKey, issuerKey)
	if err != nil {
		return nil, err
	}
	issuer, err := x509.ParseCertificate(issuerDER)
	if err != nil {
		return nil, err
	}
	leafKeys := make([]*ecdsa.PublicKey, 64)
	for i := range leafKeys {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		leafKeys[i] = &k.PublicKey
	}
	serialLimit := new(big.Int).Lsh(big.NewInt(1), 128)
	return func(_ context.Context, i int) error {
		serial, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return err
		}
		n := i % len(leafKeys)
		tmpl := &x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: fmt.Sprintf("bench-%d", n)},
			DNSNames:     []string{fmt.Sprintf("bench-%d.corp.test", n)},
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		_, err = x509.CreateCertificate(rand.Reader, tmpl, issuer, leafKeys[n], issuerKey)
		return err
	}, nil
}

// makeCSRs makes n P-256 CSRs named bench-<i> with one DNS name bench-<i>.corp.test.
func makeCSRs(n int) ([]string, error) {
	csrs := make([]string, n)
	for i := range csrs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject:  pkix.Name{CommonName: fmt.Sprintf("bench-%d", i)},
			DNSNames: []string{fmt.Sprintf("bench-%d.corp.test", i)},
		}, key)
		if err != nil {
			return nil, fmt.Errorf("making CSR %d: %w", i, err)
		}
		csrs[i] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	return csrs, nil
}

// enrollRows runs a real site on store, as `ibcm site up` does, and measures POST
// /v1/enroll for every number of clients and token mode.
func enrollRows(ctx context.Context, o Options, store caStore, dsn string, clients []int, modes []string, csrs []string, progress io.Writer) ([]Row, error) {
	fmt.Fprintf(progress, "ca: starting a site on %s\n", store.label)
	s, err := startSite(ctx, store.name, dsn)
	if err != nil {
		return nil, err
	}
	defer s.stop()
	admin, err := s.client(1, true)
	if err != nil {
		return nil, err
	}
	defer admin.CloseIdleConnections()
	newToken := func() (string, error) {
		var created wire.TokenCreated
		req := wire.TokenCreateRequest{Profile: "client", Uses: 10_000_000, TTL: "1h"}
		if err := postJSON(ctx, admin, s.cfg.CA.URL+"/v1/admin/tokens", req, http.StatusCreated, &created); err != nil {
			return "", fmt.Errorf("creating a bulk token: %w", err)
		}
		return created.Secret, nil
	}
	// The request bodies are put together from JSON strings made before the clock runs.
	csrJSON := make([]string, len(csrs))
	for i, csr := range csrs {
		b, err := json.Marshal(csr)
		if err != nil {
			return nil, err
		}
		csrJSON[i] = string(b)
	}
	url := s.cfg.CA.URL + "/v1/enroll"
	sign, err := rawSigner()
	if err != nil {
		return nil, err
	}
	var rows []Row
	for _, conc := range clients {
		client, err := s.client(conc, false)
		if err != nil {
			return nil, err
		}
		defer client.CloseIdleConnections()
		enroll := func(ctx context.Context, token string, i int) (wire.CertificateResponse, error) {
			var cr wire.CertificateResponse
			body := `{"token":"` + token + `","csr":` + csrJSON[i%len(csrJSON)] + `}`
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
			if err != nil {
				return cr, err
			}
			req.Header.Set("Content-Type", "application/json")
			if err := do(client, req, http.StatusOK, &cr); err != nil {
				return cr, err
			}
			if cr.Serial == "" || !strings.Contains(cr.Certificate, "BEGIN CERTIFICATE") {
				return cr, errors.New("enroll answered 200 without a serial and a certificate")
			}
			return cr, nil
		}
		for _, mode := range modes {
			tokens := make([]string, 1)
			if mode == "per-client" {
				tokens = make([]string, conc)
			}
			for i := range tokens {
				if tokens[i], err = newToken(); err != nil {
					return nil, err
				}
			}
			// The clients send a CSR many times: check the CA issues it again with a new serial.
			first, err := enroll(ctx, tokens[0], 0)
			if err != nil {
				return nil, fmt.Errorf("first enrollment: %w", err)
			}
			again, err := enroll(ctx, tokens[0], 0)
			if err != nil {
				return nil, fmt.Errorf("enrolling the same CSR again (the benchmark reuses CSRs): %w", err)
			}
			if first.Serial == again.Serial {
				return nil, fmt.Errorf("the same CSR enrolled twice got the same serial %s", first.Serial)
			}
			// Each operation borrows a client's token: with per-client tokens no two
			// enrollments in flight share one.
			pool := make(chan string, conc)
			for i := range conc {
				pool <- tokens[i%len(tokens)]
			}
			// The machine may be shared: each row alternates with raw signing in
			// mpRounds rounds, so both see whatever else the machine is doing.
			fmt.Fprintf(progress, "ca: enroll API on %s, %s token, %d clients (alternating with raw signing)\n", store.label, mode, conc)
			var m, ref measurement
			for range mpRounds {
				r, err := measure(ctx, Options{Duration: o.Duration / (2 * mpRounds), Warmup: o.Warmup / 4}, runtime.GOMAXPROCS(0), sign)
				if err != nil {
					return nil, err
				}
				ref = ref.merge(r)
				e, err := measure(ctx, roundOptions(o), conc, func(ctx context.Context, i int) error {
					tok := <-pool
					defer func() { pool <- tok }()
					_, err := enroll(ctx, tok, i)
					return err
				})
				if err != nil {
					return nil, err
				}
				m = m.merge(e)
			}
			target := caRawShare * ref.rate()
			p50, p99 := m.percentile(0.50), m.percentile(0.99)
			pass := m.rate() >= target
			rows = append(rows, Row{Name: fmt.Sprintf("enroll, %s, %s token, %d clients: %.1f%% of raw", store.label, mode, conc, 100*m.rate()/ref.rate()),
				Value: m.rate(), Unit: "certs/s", Count: m.count, P50ms: &p50, P99ms: &p99, Target: &target, Pass: &pass})
		}
	}
	return rows, nil
}

// runningSite is a site started in this process by site.Init and site.Run.
type runningSite struct {
	dir    string
	cfg    *site.Config
	cancel context.CancelFunc
	done   chan error
}

func startSite(ctx context.Context, store, dsn string) (*runningSite, error) {
	if store != "sqlite" {
		store = "postgres"
	}
	return startSiteWith(ctx, site.InitOptions{Store: store, DSN: dsn}, "ca ")
}

// startSiteWith inits a site with o in a new temporary directory, every listener on a free
// 127.0.0.1 port unless o names one, runs it, and returns once site.Run printed the
// listener line starting with ready. configure, when given, changes the configuration
// before the site runs.
func startSiteWith(ctx context.Context, o site.InitOptions, ready string, configure ...func(*site.Config)) (_ *runningSite, err error) {
	dir, err := os.MkdirTemp("", "ibcm-bench-")
	if err != nil {
		return nil, err
	}
	s := &runningSite{dir: dir}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	for _, addr := range []*string{&o.CAAddr, &o.CAPublicAddr, &o.MPIntranetAddr, &o.MPInternetAddr} {
		if *addr == "" {
			if *addr, err = freeAddr(); err != nil {
				return nil, err
			}
		}
	}
	o.Dir, o.SiteCode = filepath.Join(dir, "site"), "BEN"
	o.NoConsole = true // no web console: its fixed default port could be taken
	o.IntranetName, o.InternetName = "ibcm.bench.test", "ibcm.bench.example"
	s.cfg, err = site.Init(ctx, o, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("site init: %w", err)
	}
	for _, fn := range configure {
		fn(s.cfg)
	}
	runCtx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.done = make(chan error, 1)
	out := &readyWriter{prefix: ready, ready: make(chan struct{})}
	go func() { s.done <- site.Run(runCtx, s.cfg, out, zerolog.Nop()) }()
	select {
	case <-out.ready:
		return s, nil
	case err := <-s.done:
		s.done <- err // for stop
		if err == nil {
			err = fmt.Errorf("stopped before its %q listener was up", strings.TrimSpace(ready))
		}
		return nil, fmt.Errorf("site run: %w", err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stop shuts the site down, waits for site.Run to return, and removes its directory.
func (s *runningSite) stop() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	_ = os.RemoveAll(s.dir)
}

// client returns an HTTPS client trusting the site's root that keeps conns connections
// alive; with admin it presents the first admin's certificate.
func (s *runningSite) client(conns int, admin bool) (*http.Client, error) {
	rootPEM, err := os.ReadFile(s.cfg.Path(s.cfg.CA.RootCert))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, errors.New("no certificate in the site's root file")
	}
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if admin {
		cert, err := tls.LoadX509KeyPair(s.cfg.Path(site.AdminCert), s.cfg.Path(site.AdminKey))
		if err != nil {
			return nil, fmt.Errorf("loading the admin identity: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     tc,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			IdleConnTimeout:     time.Minute,
		},
	}, nil
}

func postJSON(ctx context.Context, c *http.Client, url string, in any, status int, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return do(c, req, status, out)
}

// do sends req and decodes the answer into out when it has the wanted status; any other
// answer becomes an error carrying the API's error code and message.
func do(c *http.Client, req *http.Request, status int, out any) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of %s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode != status {
		var e wire.Error
		if json.Unmarshal(body, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("%s %s answered %s: %s: %s", req.Method, req.URL.Path, resp.Status, e.Error.Code, e.Error.Message)
		}
		return fmt.Errorf("%s %s answered %s: %.200q", req.Method, req.URL.Path, resp.Status, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding the answer of %s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// readyWriter receives site.Run's listener lines and closes ready at the first line
// starting with prefix.
type readyWriter struct {
	prefix string
	ready  chan struct{}
	mu     sync.Mutex
	buf    []byte
	seen   bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if !w.seen && strings.HasPrefix(line, w.prefix) {
			w.seen = true
			close(w.ready)
		}
	}
}

// freeAddr returns a 127.0.0.1 address with a port free at the time of the call.
func freeAddr() (string, error) { return freeport.Addr() }
