package main

import (
	"bufio"
	"bytes"
	"cmp"
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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

var mpSuite = Suite{
	Name:  "mp",
	Title: "management point: check-ins/s over kept-alive mTLS, new mTLS handshakes/s, memory per idle notification connection",
	Run:   runMP,
}

var (
	mpIdle        = flag.Int("mp-idle", 10000, "mp suite: idle notification connections to hold open on the MP (0 skips the memory row)")
	mpIdleDevices = flag.Int("mp-idle-devices", 50, "mp suite: device certificates the idle connections are spread over")
	mpBinary      = flag.String("mp-binary", "", "mp suite: a built ibcm binary to run as the separate MP process (default: go build ./cli/ibcm once)")
	mpGOGC        = flag.String("mp-gogc", "", "mp suite: GOGC of the separate MP process (default: inherited)")
	mpBreakdown   = flag.Int("mp-breakdown", 2000, "mp suite: idle connections to an in-process MP whose heap is profiled, to show where the memory goes (0: never)")
)

const (
	// mpConcurrency is the default number of devices checking in at once, each with its
	// own certificate and its own kept-alive connection. On 2 cores 8 gave the best rate
	// (4: same rate, 16 and 32: no more throughput, twice the latency).
	mpConcurrency = 8

	mpRounds             = 3   // alternating rounds of the MP and its limit in each phase
	mpCheckinRatioTarget = 80  // % of the bare TLS server's rate (DESIGN.md §12)
	mpIdleTargetKiB      = 16  // KiB per idle notification connection: 100,000 in < 2 GiB
	mpIdleWarmup         = 100 // connections opened before the baseline RSS
	mpIdleDialers        = 16  // notification connections being opened at once
	mpServerName         = "ibcm.bench.test"
	checkinBody          = `{"location":"intranet","addresses":["10.0.0.7"],"agent_version":"0.1","compliance":"compliant"}`
	idleClientEnv        = "IBCM_BENCH_IDLE_CLIENT" // set: this process is the breakdown's client
)

func runMP(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "mp"}
	conc := o.Concurrency
	if conc == 0 {
		conc = mpConcurrency
	}
	if *mpIdle < 0 || *mpIdleDevices < 1 {
		return res, errors.New("-mp-idle must be 0 or more and -mp-idle-devices at least 1")
	}
	if *mpIdle > 0 { // fail before the long phases
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return res, err
		}
		if need := uint64(*mpIdle + 1000); lim.Max < need {
			return res, fmt.Errorf("-mp-idle %d needs at least %d file descriptors in each process, the hard limit (ulimit -Hn) is %d: raise it or lower -mp-idle", *mpIdle, need, lim.Max)
		}
	}

	fmt.Fprintln(progress, "mp: starting a site on sqlite (CA and MP in this process)")
	s, err := startSiteWith(ctx, site.InitOptions{Store: "sqlite"}, "mp-intranet", func(c *site.Config) {
		c.MP.MaxChannelsPerDevice = channelsPerCert(*mpBreakdown, breakdownDevices)
	})
	if err != nil {
		return res, err
	}
	defer s.stop()
	mpAddr := strings.TrimPrefix(s.cfg.MP.IntranetURL, "https://")
	devices, err := enrollDevices(ctx, s, max(conc, 4))
	if err != nil {
		return res, err
	}
	roots, err := s.roots()
	if err != nil {
		return res, err
	}
	bare, err := startBare(s.cfg, roots)
	if err != nil {
		return res, err
	}
	defer bare.Close()

	// 1. Check-ins over kept-alive mutual TLS.
	targets := []struct{ name, addr string }{{"bare", bare.Addr().String()}, {"MP", mpAddr}}
	var checkin [2]measurement
	for round := range mpRounds {
		for i, t := range targets {
			fmt.Fprintf(progress, "mp: check-ins against the %s server, %d devices (round %d/%d)\n", t.name, conc, round+1, mpRounds)
			m, err := measureCheckins(ctx, roundOptions(o), t.addr, roots, devices[:conc])
			if err != nil {
				return res, fmt.Errorf("check-ins against the %s server: %w", t.name, err)
			}
			checkin[i] = checkin[i].merge(m)
		}
	}
	ratio := 100 * checkin[1].rate() / checkin[0].rate()
	res.Rows = append(res.Rows,
		latencyRow("check-in, bare crypto/tls + net/http (limit)", "req/s", checkin[0]),
		latencyRow("check-in, MP", "req/s", checkin[1]),
		targetRow("check-in, MP / bare", "%", ratio, 0, mpCheckinRatioTarget, false))

	// 2. New full mutual-TLS handshakes.
	var hs [2]measurement
	var kx string
	for round := range mpRounds {
		for i, t := range targets {
			fmt.Fprintf(progress, "mp: new mTLS handshakes against the %s server, %d dialers (round %d/%d)\n", t.name, conc, round+1, mpRounds)
			if kx, err = handshakeProbe(ctx, t.addr, roots, devices[0]); err != nil {
				return res, fmt.Errorf("handshake with the %s server: %w", t.name, err)
			}
			m, err := measure(ctx, roundOptions(o), conc, func(ctx context.Context, n int) error {
				_, err := handshakeGet(ctx, t.addr, roots, devices[n%len(devices)])
				return err
			})
			if err != nil {
				return res, fmt.Errorf("handshakes with the %s server: %w", t.name, err)
			}
			hs[i] = hs[i].merge(m)
		}
	}
	res.Rows = append(res.Rows,
		latencyRow("new mTLS handshake + GET /healthz, bare", "conn/s", hs[0]),
		latencyRow("new mTLS handshake + GET /healthz, MP", "conn/s", hs[1]),
		Row{Name: "new mTLS handshakes, MP / bare", Value: 100 * hs[1].rate() / hs[0].rate(), Unit: "%"})
	res.Notes = append(res.Notes,
		"store: SQLite (site init default); the site (CA + MP) runs in this process beside its clients, sharing the CPUs",
		fmt.Sprintf("check-in: %d devices, each its own client certificate and one kept-alive HTTP/1.1 connection, POST /v1/checkin %s -> 200 wire.CheckinResponse", conc, checkinBody),
		"bare: crypto/tls + net/http in this process, the MP's certificate, RequireAnyClientCert + VerifyConnection (x509 chain to the site root, clientAuth), same http.Server timeouts; the handler reads the body and answers a fixed CheckinResponse",
		fmt.Sprintf("check-in: MP = %.0f%% of bare (target >= %d%%); each phase alternates bare and MP in %d rounds of -duration/%d after %s warm-up each, summed", ratio, mpCheckinRatioTarget, mpRounds, mpRounds, o.Warmup/2),
		fmt.Sprintf("handshake: dial + full TLS 1.3 handshake (no session cache, ECDSA P-256 certificates both sides, key exchange %s) + GET /healthz with Connection: close, read to EOF; %d dialers", kx, conc),
	)

	// 3. Memory per idle notification connection, the MP alone in its own process.
	if *mpIdle > 0 {
		row, notes, err := idleMemory(ctx, progress)
		if err != nil {
			return res, fmt.Errorf("idle notification connections: %w", err)
		}
		res.Rows = append(res.Rows, row)
		res.Notes = append(res.Notes, notes...)
		if *mpBreakdown > 0 {
			fmt.Fprintf(progress, "mp: where the memory goes: profiling %d idle connections on the in-process MP\n", *mpBreakdown)
			notes, err := idleBreakdown(ctx, s, *mpBreakdown)
			if err != nil {
				return res, fmt.Errorf("memory breakdown: %w", err)
			}
			res.Notes = append(res.Notes, notes...)
		}
	}
	return res, nil
}

// roundOptions splits a phase into mpRounds rounds, so the MP and its limit alternate and
// share whatever else the machine is doing.
func roundOptions(o Options) Options {
	return Options{Duration: o.Duration / mpRounds, Warmup: o.Warmup / 2, Concurrency: o.Concurrency}
}

// merge adds the operations and window of another round.
func (m measurement) merge(o measurement) measurement {
	lat := append(slices.Clip(m.latency), o.latency...)
	slices.Sort(lat)
	return measurement{count: m.count + o.count, window: m.window + o.window, latency: lat}
}

func latencyRow(name, unit string, m measurement) Row {
	p50, p99 := m.percentile(0.50), m.percentile(0.99)
	return Row{Name: name, Value: m.rate(), Unit: unit, Count: m.count, P50ms: &p50, P99ms: &p99}
}

func targetRow(name, unit string, v float64, count int, target float64, atMost bool) Row {
	pass := v >= target
	if atMost {
		pass = v <= target
	}
	return Row{Name: name, Value: v, Unit: unit, Count: count, Target: &target, AtMost: atMost, Pass: &pass}
}

// device is an enrolled device: its certificate chain and key.
type device struct {
	cert    tls.Certificate
	certPEM []byte
	keyPEM  []byte
}

// enrollDevices has the site's CA issue n client certificates through the enroll API with
// one token of n uses made with the admin identity.
func enrollDevices(ctx context.Context, s *runningSite, n int) ([]device, error) {
	admin, err := s.client(1, true)
	if err != nil {
		return nil, err
	}
	defer admin.CloseIdleConnections()
	var tok wire.TokenCreated
	if err := postJSON(ctx, admin, s.cfg.CA.URL+"/v1/admin/tokens", wire.TokenCreateRequest{Profile: "client", Uses: n, TTL: "1h"}, http.StatusCreated, &tok); err != nil {
		return nil, fmt.Errorf("creating a client token: %w", err)
	}
	c, err := s.client(1, false)
	if err != nil {
		return nil, err
	}
	defer c.CloseIdleConnections()
	devices := make([]device, n)
	for i := range devices {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("bench-dev-%d", i)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name + ".corp.test"}}, key)
		if err != nil {
			return nil, err
		}
		var cr wire.CertificateResponse
		req := wire.EnrollRequest{Token: tok.Secret, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}
		if err := postJSON(ctx, c, s.cfg.CA.URL+"/v1/enroll", req, http.StatusOK, &cr); err != nil {
			return nil, fmt.Errorf("enrolling device %d: %w", i, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		d := device{certPEM: []byte(cr.Certificate), keyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}
		if d.cert, err = tls.X509KeyPair(d.certPEM, d.keyPEM); err != nil {
			return nil, fmt.Errorf("device %d: %w", i, err)
		}
		devices[i] = d
	}
	return devices, nil
}

func (s *runningSite) roots() (*x509.CertPool, error) {
	rootPEM, err := os.ReadFile(s.cfg.Path(s.cfg.CA.RootCert))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, errors.New("no certificate in the site's root file")
	}
	return roots, nil
}

// deviceTLS is a device's client configuration: TLS 1.3 only, no session cache (every
// new connection is a full handshake).
func deviceTLS(roots *x509.CertPool, d device) *tls.Config {
	return &tls.Config{RootCAs: roots, ServerName: mpServerName, Certificates: []tls.Certificate{d.cert},
		MinVersion: tls.VersionTLS13, MaxVersion: tls.VersionTLS13}
}

// startBare serves the limit of the MP's TLS listener: the same certificate and the same
// shape of client verification, the same http.Server timeouts, and a handler that reads
// the body and answers a small JSON.
func startBare(cfg *site.Config, roots *x509.CertPool) (net.Listener, error) {
	cert, err := tls.LoadX509KeyPair(cfg.Path(cfg.MP.TLSCert), cfg.Path(cfg.MP.TLSKey))
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no client certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			return err
		},
	}
	answer, _ := json.Marshal(wire.CheckinResponse{NextCheckinSeconds: 900, PolicyETag: `"default-1"`})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, wire.MaxBody)); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(answer)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          nil,
	}
	tln := tls.NewListener(ln, tc)
	go func() { _ = srv.Serve(tln) }()
	return tln, nil
}

// measureCheckins runs one device per client: each client has its own certificate and
// one kept-alive connection; a worker borrows a free client for each check-in.
func measureCheckins(ctx context.Context, o Options, addr string, roots *x509.CertPool, devices []device) (measurement, error) {
	pool := make(chan *http.Client, len(devices))
	for _, d := range devices {
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: deviceTLS(roots, d),
			MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1, IdleConnTimeout: time.Minute}}
		defer c.CloseIdleConnections()
		pool <- c
	}
	url := "https://" + addr + "/v1/checkin"
	checkin := func(ctx context.Context, _ int) error {
		c := <-pool
		defer func() { pool <- c }()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(checkinBody))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		var cr wire.CheckinResponse
		if err := do(c, req, http.StatusOK, &cr); err != nil {
			return err
		}
		if cr.NextCheckinSeconds <= 0 {
			return fmt.Errorf("check-in answered next_checkin_seconds %d", cr.NextCheckinSeconds)
		}
		return nil
	}
	for range devices { // first contact registers the device: not part of the steady state
		if err := checkin(ctx, 0); err != nil {
			return measurement{}, err
		}
	}
	return measure(ctx, o, len(devices), checkin)
}

// handshakeGet dials, completes a full mutual-TLS handshake, sends GET /healthz with
// Connection: close and reads the answer to EOF, so the server's side of the handshake
// (verifying the client's certificate) is inside the measured time.
func handshakeGet(ctx context.Context, addr string, roots *x509.CertPool, d device) (tls.ConnectionState, error) {
	dialer := tls.Dialer{Config: deviceTLS(roots, d)}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, "GET /healthz HTTP/1.1\r\nHost: "+mpServerName+"\r\nConnection: close\r\n\r\n"); err != nil {
		return tls.ConnectionState{}, err
	}
	resp, err := io.ReadAll(io.LimitReader(tc, 64<<10))
	if err != nil {
		return tls.ConnectionState{}, err
	}
	if !bytes.HasPrefix(resp, []byte("HTTP/1.1 200 ")) {
		return tls.ConnectionState{}, fmt.Errorf("GET /healthz answered %.80q", resp)
	}
	return tc.ConnectionState(), nil
}

// handshakeProbe checks one handshake is full TLS 1.3 and returns its key exchange.
func handshakeProbe(ctx context.Context, addr string, roots *x509.CertPool, d device) (string, error) {
	cs, err := handshakeGet(ctx, addr, roots, d)
	if err != nil {
		return "", err
	}
	if cs.Version != tls.VersionTLS13 || cs.DidResume {
		return "", fmt.Errorf("handshake was %s, resumed %v: want a full TLS 1.3 handshake", tls.VersionName(cs.Version), cs.DidResume)
	}
	return cs.CurveID.String(), nil
}

// idleConns holds open notification channels.
type idleConns struct {
	mu    sync.Mutex
	conns []*websocket.Conn
	lost  atomic.Int64 // closed by the other side while held
}

// open opens n more notification channels to url, spread over devices, mpIdleDialers at
// once. Every channel is read (CloseRead), so the MP's pings are answered.
func (ic *idleConns) open(ctx context.Context, url string, roots *x509.CertPool, clients []*http.Client, n int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, mpIdleDialers)
	for range mpIdleDialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				ws, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: clients[i%len(clients)]})
				cancel()
				if err != nil {
					errc <- fmt.Errorf("notification channel %d: %w", i, err)
					return
				}
				done := ws.CloseRead(context.Background())
				go func() { <-done.Done(); ic.lost.Add(1) }()
				ic.mu.Lock()
				ic.conns = append(ic.conns, ws)
				ic.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func (ic *idleConns) len() int {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return len(ic.conns)
}

// closeAll closes every channel: a close frame and the connection, without waiting for
// the other side's close frame.
func (ic *idleConns) closeAll() {
	ic.mu.Lock()
	conns := ic.conns
	ic.conns = nil
	ic.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = c.CloseNow()
		}()
	}
	wg.Wait()
}

// breakdownDevices is how many device certificates the profiled idle channels share.
const breakdownDevices = 20

// channelsPerCert is the mp.max_channels_per_device a benchmark needs to hold n idle
// channels (and the warm-up ones) over certs certificates: the channels stand for devices
// that would each hold one, and enrolling that many would time the CA, not the MP.
func channelsPerCert(n, certs int) int {
	perCert := func(k int) int { return (k + certs - 1) / certs } // each round starts at the first
	return max(1, perCert(mpIdleWarmup)+perCert(n))
}

// setChannelsPerDevice sets mp.max_channels_per_device in the site.yaml at path.
func setChannelsPerDevice(path string, n int) error {
	cfg, err := site.Load(path)
	if err != nil {
		return err
	}
	cfg.MP.MaxChannelsPerDevice = n
	body, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o600)
}

// notifyClients makes one HTTP client per device for notification channels. An upgraded
// connection never goes back to the transport's pool, so every Dial opens its own TCP
// connection. The devices present their leaf certificate alone, as the agent can: the MP
// has the site's issuing CAs as intermediates, and every certificate a device sends is
// parsed and kept by the MP's crypto/tls for the life of the connection.
func notifyClients(roots *x509.CertPool, devices []device) []*http.Client {
	clients := make([]*http.Client, len(devices))
	for i, d := range devices {
		d.cert.Certificate = d.cert.Certificate[:1]
		clients[i] = &http.Client{Transport: &http.Transport{TLSClientConfig: deviceTLS(roots, d), DisableKeepAlives: true}}
	}
	return clients
}

// idleMemory runs the real ibcm binary as a separate process, holds *mpIdle idle
// notification channels on its intranet listener and measures its RSS per channel.
func idleMemory(ctx context.Context, progress io.Writer) (Row, []string, error) {
	tmp, err := os.MkdirTemp("", "ibcm-bench-mp-")
	if err != nil {
		return Row{}, nil, err
	}
	defer os.RemoveAll(tmp)
	bin, err := ibcmBinary(ctx, tmp, progress)
	if err != nil {
		return Row{}, nil, err
	}
	dir := filepath.Join(tmp, "site")
	if err := initSiteDir(ctx, bin, dir); err != nil {
		return Row{}, nil, err
	}
	if err := setChannelsPerDevice(filepath.Join(dir, site.FileName), channelsPerCert(*mpIdle, *mpIdleDevices)); err != nil {
		return Row{}, nil, err
	}

	fmt.Fprintln(progress, "mp: ibcm site up (separate process)")
	var env []string
	if *mpGOGC != "" {
		env = []string{"GOGC=" + *mpGOGC}
	}
	up, err := startUp(ctx, bin, dir, filepath.Join(tmp, "site-up.log"), env)
	if err != nil {
		return Row{}, nil, err
	}
	defer up.stop()
	stop := up.stop
	pid := up.pid()

	cfg, err := site.Load(filepath.Join(dir, site.FileName))
	if err != nil {
		return Row{}, nil, err
	}
	s := &runningSite{dir: tmp, cfg: cfg}
	fmt.Fprintf(progress, "mp: enrolling %d devices\n", *mpIdleDevices)
	devices, err := enrollDevices(ctx, s, *mpIdleDevices)
	if err != nil {
		return Row{}, nil, err
	}
	roots, err := s.roots()
	if err != nil {
		return Row{}, nil, err
	}
	clients := notifyClients(roots, devices)
	url := "wss://" + strings.TrimPrefix(cfg.MP.IntranetURL, "https://") + "/v1/notify"
	ic := &idleConns{}
	defer ic.closeAll()

	fmt.Fprintf(progress, "mp: warm-up: %d notification channels\n", mpIdleWarmup)
	if err := ic.open(ctx, url, roots, clients, mpIdleWarmup); err != nil {
		return Row{}, nil, err
	}
	before, err := stableRSS(ctx, pid)
	if err != nil {
		return Row{}, nil, err
	}
	threads0, _ := procStatus(pid, "Threads")
	fmt.Fprintf(progress, "mp: opening %d idle notification channels (MP RSS %.1f MiB)\n", *mpIdle, float64(before)/(1<<20))
	t0 := time.Now()
	if err := ic.open(ctx, url, roots, clients, *mpIdle); err != nil {
		return Row{}, nil, err
	}
	openTime := time.Since(t0)
	after, err := stableRSS(ctx, pid)
	if err != nil {
		return Row{}, nil, err
	}
	threads1, _ := procStatus(pid, "Threads")
	anon, _ := procStatus(pid, "RssAnon")
	if lost := ic.lost.Load(); lost > 0 {
		return Row{}, nil, fmt.Errorf("%d notification channels were closed by the MP while idle", lost)
	}
	held := ic.len() - mpIdleWarmup
	perConn := float64(after-before) / float64(held) / 1024
	row := targetRow(fmt.Sprintf("MP RSS per idle notification conn (%d)", held), "KiB", perConn, held, mpIdleTargetKiB, true)
	notes := []string{
		fmt.Sprintf("idle: the real `ibcm site up` (CA + MP, SQLite) in its own process; %d WebSocket notification channels (wss /v1/notify, each its own TCP + TLS 1.3 connection) over %d device certificates, opened in %s (%.0f/s)",
			held, len(devices), openTime.Round(time.Millisecond), float64(held)/openTime.Seconds()),
		fmt.Sprintf("idle: MP VmRSS %.1f MiB after %d warm-up channels -> %.1f MiB with %d more (RssAnon %.1f MiB; stable: two reads 500 ms apart within 1%%); OS threads %d -> %d; GOGC %s; %.1f KiB/conn -> 100,000 idle devices = %.2f GiB",
			float64(before)/(1<<20), mpIdleWarmup, float64(after)/(1<<20), held, float64(anon)/1024, threads0, threads1, cmp.Or(*mpGOGC, os.Getenv("GOGC"), "default (100)"), perConn, perConn*100000/(1<<20)),
	}
	ic.closeAll()
	if err := stop(); err != nil {
		notes = append(notes, fmt.Sprintf("idle: ibcm site up stopped with: %v", err))
	}
	return row, notes, nil
}

// stableRSS reads VmRSS every 500 ms until two reads in a row differ by less than 1%, for
// at most 20 s, and returns the last read in bytes.
func stableRSS(ctx context.Context, pid int) (int64, error) {
	prev, err := procStatus(pid, "VmRSS")
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		cur, err := procStatus(pid, "VmRSS")
		if err != nil {
			return 0, err
		}
		if d := cur - prev; max(d, -d) < cur/100 {
			return cur * 1024, nil
		}
		prev = cur
	}
	return prev * 1024, nil
}

// procStatus returns a number of /proc/PID/status (kB for sizes).
func procStatus(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, key)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// idleSpec is what the breakdown's client process needs.
type idleSpec struct {
	URL     string   `json:"url"`
	Root    string   `json:"root"`
	Certs   []string `json:"certs"`
	Keys    []string `json:"keys"`
	Conns   int      `json:"conns"`
	Warmup  int      `json:"warmup"`
	Devices int      `json:"devices"`
}

// idleBreakdown holds n idle notification channels on the in-process MP of s, opened by a
// child process (this benchmark binary again), so the heap profile and the memory
// statistics of this process are the MP's side alone.
func idleBreakdown(ctx context.Context, s *runningSite, n int) ([]string, error) {
	devices, err := enrollDevices(ctx, s, breakdownDevices)
	if err != nil {
		return nil, err
	}
	rootPEM, err := os.ReadFile(s.cfg.Path(s.cfg.CA.RootCert))
	if err != nil {
		return nil, err
	}
	spec := idleSpec{URL: "wss://" + strings.TrimPrefix(s.cfg.MP.IntranetURL, "https://") + "/v1/notify", Root: string(rootPEM), Conns: n, Warmup: mpIdleWarmup}
	for _, d := range devices {
		spec.Certs = append(spec.Certs, string(d.certPEM))
		spec.Keys = append(spec.Keys, string(d.keyPEM))
	}
	specFile, err := os.CreateTemp("", "ibcm-bench-idle-*.json")
	if err != nil {
		return nil, err
	}
	defer os.Remove(specFile.Name())
	if err := json.NewEncoder(specFile).Encode(spec); err != nil {
		return nil, err
	}
	specFile.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), idleClientEnv+"="+specFile.Name())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	next := func(want string) error {
		if !lines.Scan() {
			return fmt.Errorf("the client process stopped before %q", want)
		}
		if lines.Text() != want {
			return fmt.Errorf("the client process said %q, want %q", lines.Text(), want)
		}
		return nil
	}

	runtime.MemProfileRate = 1 // every allocation from here on, with its stack
	if err := next("warm"); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	before := snapshotMem()
	if _, err := io.WriteString(stdin, "open\n"); err != nil {
		return nil, err
	}
	if err := next("open"); err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	after := snapshotMem()
	runtime.MemProfileRate = 512 * 1024

	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(n) / 1024 }
	notes := []string{
		fmt.Sprintf("breakdown: %d idle notification channels on the MP in this process (clients in a child process); per channel, after GC:", n),
		fmt.Sprintf("  RSS %.1f KiB (after debug.FreeOSMemory) ; heap in use %.1f KiB + goroutine stacks %.1f KiB; %.2f goroutines/channel; heap objects +%.0f/channel",
			(float64(after.rss)-float64(before.rss))/float64(n)/1024, per(before.ms.HeapInuse, after.ms.HeapInuse), per(before.ms.StackInuse, after.ms.StackInuse),
			float64(after.goroutines-before.goroutines)/float64(n), (float64(after.ms.HeapObjects)-float64(before.ms.HeapObjects))/float64(n)),
		"  live heap by allocation site (KiB/channel, first frames outside the runtime):",
	}
	type allocSum struct {
		key   string
		bytes int64
	}
	var sites []allocSum
	for k, v := range after.heap {
		if d := v - before.heap[k]; d > 0 {
			sites = append(sites, allocSum{k, d})
		}
	}
	slices.SortFunc(sites, func(a, b allocSum) int { return int(b.bytes - a.bytes) })
	var shown int64
	for i, st := range sites {
		if i == 14 {
			break
		}
		shown += st.bytes
		notes = append(notes, fmt.Sprintf("    %6.2f  %s", float64(st.bytes)/float64(n)/1024, st.key))
	}
	var total int64
	for _, st := range sites {
		total += st.bytes
	}
	notes = append(notes, fmt.Sprintf("    %6.2f  (the %d other sites)", float64(total-shown)/float64(n)/1024, max(len(sites)-14, 0)))
	gs := goroutinesByEntry()
	notes = append(notes, "  goroutines by entry function (count with the channels open):")
	for i, g := range gs {
		if i == 6 {
			break
		}
		notes = append(notes, fmt.Sprintf("    %6d  %s", g.n, g.fn))
	}
	return notes, nil
}

type memSnapshot struct {
	ms         runtime.MemStats
	rss        int64
	goroutines int
	heap       map[string]int64 // live bytes by allocation site
}

func snapshotMem() memSnapshot {
	runtime.GC() // the heap profile is as of the last completed cycle
	debug.FreeOSMemory()
	var s memSnapshot
	runtime.ReadMemStats(&s.ms)
	s.goroutines = runtime.NumGoroutine()
	rss, _ := procStatus(os.Getpid(), "VmRSS")
	s.rss = rss * 1024
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+100)
	}
	s.heap = map[string]int64{}
	for _, r := range recs {
		s.heap[allocSite(r.Stack())] += r.InUseBytes()
	}
	return s
}

// allocSite names an allocation by its first three frames outside the runtime.
func allocSite(stk []uintptr) string {
	frames := runtime.CallersFrames(stk)
	var names []string
	for {
		f, more := frames.Next()
		if fn := f.Function; fn != "" && !strings.HasPrefix(fn, "runtime.") && !strings.HasPrefix(fn, "internal/") {
			names = append(names, shortFunc(fn))
			if len(names) == 3 {
				break
			}
		}
		if !more {
			break
		}
	}
	if len(names) == 0 {
		return "runtime"
	}
	return strings.Join(names, " < ")
}

func shortFunc(fn string) string {
	fn = strings.TrimPrefix(fn, "github.com/ibcm-project/ibcm/")
	fn = strings.TrimPrefix(fn, "github.com/coder/")
	return fn
}

type goroutineGroup struct {
	fn string
	n  int
}

// goroutinesByEntry counts this process's goroutines by the function they were started with.
func goroutinesByEntry() []goroutineGroup {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	count := map[string]int{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(strings.TrimSpace(g), "\n")
		// the last lines are "created by F in goroutine N" and its file line
		entry := "?"
		for i := len(lines) - 1; i >= 0; i-- {
			if rest, ok := strings.CutPrefix(lines[i], "created by "); ok {
				entry = shortFunc(strings.Split(rest, " in goroutine")[0])
				break
			}
		}
		// the innermost non-runtime frame says where it waits
		wait := ""
		for i := 1; i+1 < len(lines); i += 2 {
			fn := lines[i]
			if j := strings.LastIndexByte(fn, '('); j > 0 {
				fn = fn[:j]
			}
			if !strings.HasPrefix(fn, "runtime.") && !strings.HasPrefix(fn, "internal/") && !strings.HasPrefix(fn, "sync.") {
				wait = shortFunc(fn)
				break
			}
		}
		count["created by "+entry+", waiting in "+wait]++
	}
	var out []goroutineGroup
	for k, v := range count {
		out = append(out, goroutineGroup{k, v})
	}
	slices.SortFunc(out, func(a, b goroutineGroup) int { return b.n - a.n })
	return out
}

// The breakdown's client: when idleClientEnv names a spec, this process opens the
// channels it asks for, says "warm" after the warm-up ones, waits for "open" on stdin,
// opens the rest, says "open", and closes everything when stdin closes.
func init() {
	path := os.Getenv(idleClientEnv)
	if path == "" {
		return
	}
	if err := idleClient(path); err != nil {
		fmt.Fprintf(os.Stderr, "bench idle client: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func idleClient(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec idleSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(spec.Root))
	var devices []device
	for i := range spec.Certs {
		c, err := tls.X509KeyPair([]byte(spec.Certs[i]), []byte(spec.Keys[i]))
		if err != nil {
			return err
		}
		devices = append(devices, device{cert: c})
	}
	clients := notifyClients(roots, devices)
	ctx := context.Background()
	ic := &idleConns{}
	defer ic.closeAll()
	if err := ic.open(ctx, spec.URL, roots, clients, spec.Warmup); err != nil {
		return err
	}
	fmt.Println("warm")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "open" {
		return nil
	}
	if err := ic.open(ctx, spec.URL, roots, clients, spec.Conns); err != nil {
		return err
	}
	fmt.Println("open")
	for in.Scan() {
	}
	if lost := ic.lost.Load(); lost > 0 {
		return fmt.Errorf("%d channels were closed by the MP while idle", lost)
	}
	return nil
}

// ibcmBinary returns -mp-binary, or builds ./cli/ibcm into dir.
func ibcmBinary(ctx context.Context, dir string, progress io.Writer) (string, error) {
	if *mpBinary != "" {
		return *mpBinary, nil
	}
	bin := filepath.Join(dir, "ibcm")
	fmt.Fprintln(progress, "go build ./cli/ibcm")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "nobadger,nomysql,nopgx,nobbolt", "-o", bin, "./cli/ibcm")
	cmd.Stdout, cmd.Stderr = progress, progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cli/ibcm (run the bench from the module root, or pass -mp-binary): %w", err)
	}
	return bin, nil
}

// initSiteDir runs `ibcm site init` into dir, every listener on a free 127.0.0.1 port, with
// extra flags added.
func initSiteDir(ctx context.Context, bin, dir string, extra ...string) error {
	var addrs [4]string
	for i := range addrs {
		var err error
		if addrs[i], err = freeAddr(); err != nil {
			return err
		}
	}
	initCmd := exec.CommandContext(ctx, bin, "site", "init", "--dir", dir, "--site-code", "BEN",
		"--intranet-name", "ibcm.bench.test", "--internet-name", "ibcm.bench.example",
		"--ca-addr", addrs[0], "--ca-public-addr", addrs[1], "--mp-intranet-addr", addrs[2], "--mp-internet-addr", addrs[3], "--console-addr", "")
	initCmd.Args = append(initCmd.Args, extra...)
	if out, err := initCmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ibcm site init: %w\n%s", err, out)
	}
	return nil
}

// upProcess is a server (`ibcm site up`, `ibcm dp serve`, nginx) running as its own process.
type upProcess struct {
	name    string
	cmd     *exec.Cmd
	log     string
	exited  chan error
	stopped bool
}

// startUp starts `ibcm site up --dir dir`, its stderr to logPath, with env added to this
// process's environment, and returns once it printed its mp-intranet listener line.
func startUp(ctx context.Context, bin, dir, logPath string, env []string) (*upProcess, error) {
	cmd := exec.Command(bin, "site", "up", "--dir", dir)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	return startProcess(ctx, "ibcm site up", cmd, logPath, "mp-intranet")
}

// startProcess starts cmd, its stderr to logPath, and returns once a line of its stdout
// starts with ready (at once when ready is empty: the caller has its own readiness check).
func startProcess(ctx context.Context, name string, cmd *exec.Cmd, logPath, ready string) (*upProcess, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	up := &upProcess{name: name, cmd: cmd, log: logPath, exited: make(chan error, 1)}
	up.cmd.Stderr = logFile
	stdout, err := up.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := up.cmd.Start(); err != nil {
		return nil, err
	}
	readyc := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := ready == ""
		if seen {
			close(readyc)
		}
		for sc.Scan() {
			if !seen && strings.HasPrefix(sc.Text(), ready) {
				seen = true
				close(readyc)
			}
		}
		up.exited <- up.cmd.Wait()
	}()
	select {
	case <-readyc:
		return up, nil
	case err := <-up.exited:
		up.exited <- err
		up.stopped = true
		log, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("%s exited before its %s line: %v\n%s", name, ready, err, tail(log, 2000))
	case <-time.After(60 * time.Second):
		_ = up.stop()
		return nil, fmt.Errorf("%s: no %s line within 60s", name, ready)
	case <-ctx.Done():
		_ = up.stop()
		return nil, ctx.Err()
	}
}

func (up *upProcess) pid() int { return up.cmd.Process.Pid }

// stop sends SIGTERM and waits for the process to exit, killing it after 20 s.
func (up *upProcess) stop() error {
	if up.stopped {
		return nil
	}
	up.stopped = true
	_ = up.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-up.exited:
		return err
	case <-time.After(20 * time.Second):
		_ = up.cmd.Process.Kill()
		<-up.exited
		return fmt.Errorf("%s did not stop within 20s of SIGTERM; killed", up.name)
	}
}
