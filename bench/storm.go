package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/site"
)

var stormSuite = Suite{
	Name:  "storm",
	Title: "reconnect storm: agents' notification channels coming back after the MP restarts",
	Run:   runStorm,
}

var (
	stormAgents = flag.Int("storm-agents", 10000, "storm suite: simulated agents, each holding one notification channel")
	stormWait   = flag.Duration("storm-wait", 60*time.Second, "storm suite: how long after the restart an agent may take to come back before it counts as given up")
)

const (
	stormSources = 8  // 127.0.0.x source addresses the agents dial from, for loopback ports
	stormDialers = 32 // channels being opened at once before the storm
)

// stormAgent is one simulated agent: its own device certificate and TLS client,
// the agent's own reconnect schedule (agent.Reconnect: exponential backoff with jitter and
// a cap, a 503's Retry-After honoured), and the times it lost and got back its channel.
type stormAgent struct {
	client *http.Client
	rc     *agent.Reconnect
	up     chan struct{} // closed once the first channel is open
	lostAt time.Time     // when the channel the restart ended was lost
	backAt time.Time     // when the channel open since opened, after the restart
}

// stormCounts are what the agents saw, updated as they go.
type stormCounts struct {
	opened      atomic.Int64 // channels opened
	refused     atomic.Int64 // dials refused with 503 (+ Retry-After)
	failed      atomic.Int64 // other failed dials: refused connection, timeout, reset
	connRefused atomic.Int64 // of failed: the port was closed
	timedOut    atomic.Int64 // of failed: no answer in time
	mu          sync.Mutex
	other       map[string]int // of failed: the rest, by error
	after       atomic.Int64   // 503 answers that carried a Retry-After
	restarts    atomic.Int64   // set to 1 once the MP is being restarted
}

func runStorm(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "storm"}
	n := *stormAgents
	if n < 1 {
		return res, errors.New("-storm-agents must be at least 1")
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return res, err
	}
	if need := uint64(n + 1000); lim.Cur < need { // Go raises the soft limit to the hard one
		return res, fmt.Errorf("-storm-agents %d needs at least %d file descriptors in each process, the limit (ulimit -Hn) is %d: raise it or lower -storm-agents", n, need, lim.Cur)
	}
	tmp, err := os.MkdirTemp("", "ibcm-bench-storm-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	bin, err := ibcmBinary(ctx, tmp, progress)
	if err != nil {
		return res, err
	}
	dir := filepath.Join(tmp, "site")
	if err := initSiteDir(ctx, bin, dir); err != nil {
		return res, err
	}
	logPath := filepath.Join(tmp, "site-up.log")
	fmt.Fprintln(progress, "storm: ibcm site up (separate process)")
	up, err := startUp(ctx, bin, dir, logPath, nil)
	if err != nil {
		return res, err
	}
	defer func() { _ = up.stop() }()
	cfg, err := site.Load(filepath.Join(dir, site.FileName))
	if err != nil {
		return res, err
	}
	s := &runningSite{dir: tmp, cfg: cfg}
	fmt.Fprintf(progress, "storm: enrolling %d devices, one per agent\n", n)
	t0 := time.Now()
	devices, err := enrollMany(ctx, s, n)
	if err != nil {
		return res, err
	}
	enrollTime := time.Since(t0)
	roots, err := s.roots()
	if err != nil {
		return res, err
	}
	mpAddr := strings.TrimPrefix(cfg.MP.IntranetURL, "https://")

	// The references: new full mutual-TLS handshakes/s as the mp suite measures them, on
	// the bare crypto/tls server and on the same MP process, before any channel is open.
	bare, err := startBare(cfg, roots)
	if err != nil {
		return res, err
	}
	defer bare.Close()
	var refs [2]measurement
	for i, t := range []struct{ name, addr string }{{"bare", bare.Addr().String()}, {"MP", mpAddr}} {
		fmt.Fprintf(progress, "storm: reference: new mTLS handshakes against the %s server, %d dialers\n", t.name, mpConcurrency)
		if _, err := handshakeProbe(ctx, t.addr, roots, devices[0]); err != nil {
			return res, fmt.Errorf("handshake with the %s server: %w", t.name, err)
		}
		refs[i], err = measure(ctx, Options{Duration: o.Duration / 2, Warmup: o.Warmup / 2}, mpConcurrency, func(ctx context.Context, n int) error {
			_, err := handshakeGet(ctx, t.addr, roots, devices[n%len(devices)])
			return err
		})
		if err != nil {
			return res, fmt.Errorf("handshakes with the %s server: %w", t.name, err)
		}
	}
	bare.Close()
	ref := refs[0]

	clients := stormClients(roots, devices)
	url := "wss://" + mpAddr + "/v1/notify"
	agents := make([]*stormAgent, n)
	for i := range agents {
		agents[i] = &stormAgent{client: clients[i], rc: agent.NewReconnect(), up: make(chan struct{})}
	}
	var counts stormCounts
	var restarted atomic.Pointer[time.Time] // the moment the MP was told to stop
	runCtx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopAgents(); wg.Wait() }()
	var back, relost atomic.Int64 // agents back after the restart; channels lost again after coming back
	opening := make(chan struct{}, stormDialers)
	fmt.Fprintf(progress, "storm: %d agents opening their notification channels\n", n)
	t0 = time.Now()
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.run(runCtx, url, opening, &counts, &restarted, &back, &relost)
		}()
	}
	for _, a := range agents {
		select {
		case <-a.up:
		case <-time.After(90 * time.Second):
			return res, fmt.Errorf("the %d agents did not all open their channels within 90 s (%d open)", n, counts.opened.Load())
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	openTime := time.Since(t0)
	if f := counts.failed.Load() + counts.refused.Load(); f > 0 {
		fmt.Fprintf(progress, "storm: %d dials failed while opening (retried with the agent's backoff)\n", f)
	}
	counts.failed.Store(0)
	counts.refused.Store(0)
	counts.after.Store(0)
	counts.connRefused.Store(0)
	counts.timedOut.Store(0)
	counts.mu.Lock()
	counts.other = nil
	counts.mu.Unlock()

	// The restart: stop the process, start it again on the same directory and ports.
	fmt.Fprintf(progress, "storm: %d channels open in %s; restarting the MP\n", n, openTime.Round(time.Millisecond))
	now := time.Now()
	restarted.Store(&now)
	stopErr := up.stop()
	stopped := time.Since(now)
	again, err := startUp(ctx, bin, dir, logPath, nil)
	if err != nil {
		return res, fmt.Errorf("starting the MP again: %w", err)
	}
	up = again
	listening := time.Since(now)
	fmt.Fprintf(progress, "storm: MP stopped in %s, listening again after %s; waiting for the agents\n", stopped.Round(time.Millisecond), listening.Round(time.Millisecond))
	deadline := time.Now().Add(*stormWait)
	for back.Load() < int64(n) && time.Now().Before(deadline) {
		if !sleep(ctx, 20*time.Millisecond) {
			return res, ctx.Err()
		}
	}
	stopAgents()
	wg.Wait()
	var times []time.Time
	for _, a := range agents {
		if !a.backAt.IsZero() {
			times = append(times, a.backAt)
		}
	}
	gaveUp := n - len(times)

	// Per-second buckets of channels reopened, from the restart.
	var buckets []int
	var last time.Time
	for _, t := range times {
		b := int(t.Sub(now) / time.Second)
		for len(buckets) <= b {
			buckets = append(buckets, 0)
		}
		buckets[b]++
		if t.After(last) {
			last = t
		}
	}
	peak, peakAt := 0, 0
	for i, c := range buckets {
		if c > peak {
			peak, peakAt = c, i
		}
	}
	var reconnect []time.Duration // each agent: channel lost -> channel back
	for _, a := range agents {
		if !a.backAt.IsZero() && !a.lostAt.IsZero() {
			reconnect = append(reconnect, a.backAt.Sub(a.lostAt))
		}
	}
	slices.Sort(reconnect)
	m := measurement{count: len(reconnect), window: time.Second, latency: reconnect}
	p50, p99 := m.percentile(0.50), m.percentile(0.99)
	allBack := last.Sub(now).Seconds()
	allBackName := "time from the restart until all are back"
	if gaveUp > 0 {
		allBackName = fmt.Sprintf("time from the restart until %d of %d are back", len(times), n)
	}
	res.Rows = append(res.Rows,
		Row{Name: "agents holding a notification channel", Value: float64(n), Unit: "agents", Count: n},
		Row{Name: "MP restart: SIGTERM until listening again", Value: listening.Seconds(), Unit: "s"},
		Row{Name: allBackName + " (p50/p99: each agent, lost -> back)", Value: allBack, Unit: "s", Count: len(times), P50ms: &p50, P99ms: &p99},
		Row{Name: "new mTLS handshake + GET /healthz, bare (reference)", Value: ref.rate(), Unit: "conn/s", Count: ref.count},
		Row{Name: "new mTLS handshake + GET /healthz, MP", Value: refs[1].rate(), Unit: "conn/s", Count: refs[1].count},
		Row{Name: fmt.Sprintf("peak channels reopened in a 1 s bucket (second %d)", peakAt), Value: float64(peak), Unit: "conn/s", Count: peak},
		Row{Name: "peak / bare", Value: 100 * float64(peak) / ref.rate(), Unit: "%"},
		Row{Name: "largest share of the reconnections in one 1 s bucket", Value: 100 * float64(peak) / float64(max(len(times), 1)), Unit: "%"},
		Row{Name: "dials answered 503 (with Retry-After)", Value: float64(counts.refused.Load()), Unit: "dials"},
		Row{Name: fmt.Sprintf("other failed dials: %d connection refused, %d timed out, %d other", counts.connRefused.Load(), counts.timedOut.Load(),
			counts.failed.Load()-counts.connRefused.Load()-counts.timedOut.Load()), Value: float64(counts.failed.Load()), Unit: "dials"},
		targetRow(fmt.Sprintf("agents not back within %s (gave up)", *stormWait), "agents", float64(gaveUp), gaveUp, 0, true),
	)
	var hist []string
	for i, c := range buckets {
		hist = append(hist, fmt.Sprintf("%d:%d", i, c))
	}
	res.Notes = append(res.Notes,
		fmt.Sprintf("storm: the real `ibcm site up` (CA + MP, SQLite) in its own process; %d simulated agents in this process, each with its own device certificate (enrolled through the enroll API in %s) and its own WebSocket notification channel (wss /v1/notify, TCP + full TLS 1.3 handshake), from %d 127.0.0.x source addresses; opened in %s, %d at once", n, enrollTime.Round(time.Millisecond), stormSources, openTime.Round(time.Millisecond), stormDialers),
		"storm: every agent reconnects on agent.Reconnect, the agent's own schedule (after a lost channel or failed dial: exponential backoff from 1 s, full jitter, cap 5 min; a 503's Retry-After honoured) and dials as the agent does (5 s connect, 5 s TLS handshake, 15 s in all)",
		fmt.Sprintf("storm: restart = SIGTERM, wait for the exit (%s), start again on the same directory and ports, until its mp-intranet line; reconnections counted from the SIGTERM", stopped.Round(time.Millisecond)),
		fmt.Sprintf("storm: references as in the mp suite, before the channels were opened: %d dialers, dial + full TLS 1.3 handshake + GET /healthz with Connection: close, -duration/2 each, on the bare crypto/tls server (in this process) and on the MP process", mpConcurrency),
		"storm: channels reopened per second from the SIGTERM: "+strings.Join(hist, " "),
		"storm: not simulated: the catch-up GET of the policy an agent sends after reconnecting",
	)
	if r := relost.Load(); r > 0 {
		first := firstRelost.Load()
		res.Notes = append(res.Notes, fmt.Sprintf("storm: %d channels were opened after the SIGTERM and lost again; an agent is back once its channel stays (the first was lost %s after the SIGTERM: %v)", r, first.after.Round(time.Millisecond), first.err))
	}
	for msg, c := range counts.other {
		res.Notes = append(res.Notes, fmt.Sprintf("storm: %d dials failed with %q", c, msg))
	}
	if stopErr != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("storm: the first ibcm site up stopped with: %v", stopErr))
	}
	if n := counts.after.Load(); n != counts.refused.Load() {
		res.Notes = append(res.Notes, fmt.Sprintf("storm: only %d of the 503 answers carried a Retry-After", n))
	}
	return res, nil
}

// fail counts a failed dial by its cause.
func (c *stormCounts) fail(err error) {
	c.failed.Add(1)
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		c.connRefused.Add(1)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		c.timedOut.Add(1)
	default:
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		c.mu.Lock()
		if c.other == nil {
			c.other = map[string]int{}
		}
		c.other[msg]++
		c.mu.Unlock()
	}
}

// run keeps the agent's notification channel open until ctx ends, as the agent's notify
// loop does. opening bounds the first dials, so the channels open before the storm at a
// pace the MP takes; after that the agent's schedule alone decides when it dials.
// relostInfo is the first channel lost again after the restart: when, and how.
type relostInfo struct {
	after time.Duration
	err   error
}

var firstRelost atomic.Pointer[relostInfo]

func (a *stormAgent) run(ctx context.Context, url string, opening chan struct{}, counts *stormCounts, restarted *atomic.Pointer[time.Time], back, relost *atomic.Int64) {
	first := true
	for ctx.Err() == nil {
		if first {
			opening <- struct{}{}
		}
		ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: a.client})
		if first {
			<-opening
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if resp != nil && resp.StatusCode == http.StatusServiceUnavailable {
				counts.refused.Add(1)
				if resp.Header.Get("Retry-After") != "" {
					counts.after.Add(1)
				}
			} else {
				counts.fail(err)
			}
			if !sleep(ctx, a.rc.Wait(resp)) {
				return
			}
			continue
		}
		a.rc.Connected()
		counts.opened.Add(1)
		if first {
			first = false
			close(a.up)
		} else if restarted.Load() != nil {
			a.backAt = time.Now()
			back.Add(1)
		}
		ended := make(chan error, 1)
		go func() { // reading answers the MP's pings; the read fails when the channel ends
			for {
				if _, _, err := ws.Read(context.Background()); err != nil {
					ended <- err
					return
				}
			}
		}()
		var why error
		select {
		case why = <-ended:
		case <-ctx.Done():
			_ = ws.CloseNow()
			return
		}
		_ = ws.CloseNow()
		switch {
		case restarted.Load() == nil:
		case !a.backAt.IsZero(): // came back to the MP that was stopping: not back yet
			a.backAt = time.Time{}
			back.Add(-1)
			if relost.Add(1) == 1 {
				firstRelost.Store(&relostInfo{after: time.Since(*restarted.Load()), err: why})
			}
		case a.lostAt.IsZero():
			a.lostAt = time.Now()
		}
		if !sleep(ctx, a.rc.Wait(nil)) {
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// enrollMany enrolls n devices through the enroll API, 8 at a time.
func enrollMany(ctx context.Context, s *runningSite, n int) ([]device, error) {
	const workers = 8
	parts := make([][]device, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		k := n/workers + min(max(n%workers-w, 0), 1)
		if k == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[w], errs[w] = enrollDevices(ctx, s, k)
		}()
	}
	wg.Wait()
	var all []device
	for w := range workers {
		if errs[w] != nil {
			return nil, errs[w]
		}
		all = append(all, parts[w]...)
	}
	return all, nil
}

// stormClients makes one HTTP client per device, each dialing from one of stormSources
// 127.0.0.x addresses, as the agent's session client dials (client/agent/session.go): 5 s
// to connect, 5 s for the TLS handshake, 15 s for the whole request. A WebSocket never
// goes back to the pool, so every dial is a new TCP connection and a full handshake.
func stormClients(roots *x509.CertPool, devices []device) []*http.Client {
	dialers := make([]*net.Dialer, stormSources)
	for i := range dialers {
		dialers[i] = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}}
	}
	clients := make([]*http.Client, len(devices))
	for i, d := range devices {
		d.cert.Certificate = d.cert.Certificate[:1] // the leaf alone, as the agent sends it
		clients[i] = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			DialContext: dialers[i%stormSources].DialContext, TLSClientConfig: deviceTLS(roots, d),
			TLSHandshakeTimeout: 5 * time.Second, DisableKeepAlives: true,
		}}
	}
	return clients
}
