package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/wire"
	rdevice "github.com/ibcm-project/ibcm/remote/device"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/helper"
	"github.com/ibcm-project/ibcm/site"
)

var remoteSuite = Suite{
	Name:  "remote",
	Title: "remote control: session start, keystroke round trip and bulk output through the relay vs direct; MP memory and CPU per relayed session",
	Run:   runRemote,
}

var (
	remoteRuns      = flag.Int("remote-runs", 60, "remote suite: measured session starts on each path (at least 50)")
	remoteKeys      = flag.Int("remote-keys", 500, "remote suite: measured keystroke round trips on each path (at least 50)")
	remoteBulkRuns  = flag.Int("remote-bulk-runs", 5, "remote suite: bulk transfers of 256 MiB on each path")
	remoteSessions  = flag.Int("remote-sessions", 1000, "remote suite: concurrent relayed sessions held on the separate MP process (0 skips the row)")
	remoteCPUWindow = flag.Duration("remote-cpu-window", 20*time.Second, "remote suite: how long the MP's CPU is measured with every session open")
)

const (
	remoteStartRelayTargetMS  = 500
	remoteStartDirectTargetMS = 300
	remoteKeyAddedTargetMS    = 1  // relay p99 - direct p99
	remoteBulkRatioTarget     = 80 // % of direct
	remoteSessionTargetKiB    = 64 // MP RSS per relayed session, both legs
	remoteBulkBytes           = 256 << 20
	remoteWarmup              = 3  // runs of each row before the measured ones
	remoteSessionWarmup       = 20 // sessions opened before the baseline RSS
	remoteOpeners             = 8  // sessions being started at once for the memory row
	remoteOpTimeout           = 30 * time.Second
)

// remoteEnv is a device served by the real agent (client/agent in this process) on the
// intranet of a site, and the site's admin as the helper, through either MP listener.
type remoteEnv struct {
	device   string
	agent    *agent.Agent
	intranet *helper.Client // the helper on the intranet: the device's session port is offered
	internet *helper.Client // the helper on the internet: relay only
	stop     func()
}

// startRemoteEnv sets the default policy's remote_control to rc, enrolls a device into
// tmp, serves it an intranet DNS zone in-process, runs the agent with its session port on
// 127.0.0.1, and returns once the agent is on the intranet with the policy and its
// notification channel up.
func startRemoteEnv(ctx context.Context, s *runningSite, tmp string, rc wire.RemoteControlSettings) (_ *remoteEnv, err error) {
	env := &remoteEnv{}
	var stops []func()
	env.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			env.stop()
		}
	}()
	roots, err := s.roots()
	if err != nil {
		return nil, err
	}
	admin, err := tls.LoadX509KeyPair(s.cfg.Path(site.AdminCert), s.cfg.Path(site.AdminKey))
	if err != nil {
		return nil, fmt.Errorf("loading the admin identity: %w", err)
	}
	hcfg := &tls.Config{Certificates: []tls.Certificate{admin}, RootCAs: roots, MinVersion: tls.VersionTLS12}
	// The MP's certificate names the site's intranet and internet names; the listeners are
	// on 127.0.0.1: the helper's client dials the listener and checks the name.
	helperClient := func(url, name string) (*helper.Client, error) {
		addr := strings.TrimPrefix(url, "https://")
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("MP URL %q: %w", url, err)
		}
		d := &net.Dialer{Timeout: 10 * time.Second}
		return helper.NewClient("https://"+net.JoinHostPort(name, port), hcfg, func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		})
	}
	if env.intranet, err = helperClient(s.cfg.MP.IntranetURL, s.cfg.Site.IntranetName); err != nil {
		return nil, err
	}
	if env.internet, err = helperClient(s.cfg.MP.InternetURL, s.cfg.Site.InternetName); err != nil {
		return nil, err
	}

	var pol wire.Policy
	if err := env.intranet.Do(ctx, "GET", "/v1/admin/policies/default", nil, &pol); err != nil {
		return nil, fmt.Errorf("reading the default policy: %w", err)
	}
	rc.PlaySound = pol.RemoteControl.PlaySound // the default's (none)
	rc.ShowConnectionBar = pol.RemoteControl.ShowConnectionBar
	pol.RemoteControl = rc
	var stored wire.Policy
	if err := env.intranet.Do(ctx, "PUT", "/v1/admin/policies/default", pol, &stored); err != nil {
		return nil, fmt.Errorf("setting the default policy's remote_control: %w", err)
	}

	dev := filepath.Join(tmp, "device")
	id, err := enrollAgentDevice(ctx, s, dev)
	if err != nil {
		return nil, err
	}
	env.device = id.DeviceID
	b := id.Bootstrap
	if b == nil || len(b.IntranetDNSSuffixes) == 0 {
		return nil, errors.New("the enrollment answer carried no location settings (bootstrap)")
	}
	_, mpPort, _ := net.SplitHostPort(strings.TrimPrefix(s.cfg.MP.IntranetURL, "https://"))
	port, _ := strconv.ParseUint(mpPort, 10, 16)
	srvName := location.DefaultSRVName
	if len(b.SRVNames) > 0 {
		srvName = b.SRVNames[0]
	}
	suffix := strings.TrimSuffix(b.IntranetDNSSuffixes[0], ".")
	ns, err := startDNS(intranetZone(dns.Fqdn(srvName+"."+suffix), dns.Fqdn(s.cfg.Site.IntranetName), uint16(port)))
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { _ = ns.Shutdown() })
	conf := filepath.Join(tmp, "resolv.conf")
	if err := writeResolvConf(conf, ns.PacketConn.LocalAddr().String()); err != nil {
		return nil, err
	}

	a, err := agent.New(agent.Options{Dir: dev, ResolvConf: conf, Log: zerolog.Nop(), Shells: "direct",
		DirectAddrs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, err
	}
	env.agent = a
	actx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	stops = append(stops, func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := a.Status()
		if st.Location == wire.Intranet && st.Notify && st.PolicyVersion >= stored.Version {
			return env, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the agent is not ready after 30s: location %q (%s), notification channel %v, policy version %d (want %d), last error %q",
				st.Location, st.Reason, st.Notify, st.PolicyVersion, stored.Version, st.LastError)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-done:
			return nil, fmt.Errorf("the agent stopped: %v", err)
		case <-time.After(20 * time.Millisecond): // polling the agent's status, its readiness signal
		}
	}
}

// startTiming is where the time of one session start went.
type startTiming struct {
	start, connect, first, total time.Duration
}

// openSession does what `ibcm remote start DEVICE --mode unattended` does (Start, then
// Connect) and reads until the first byte of the shell. want is the transport it must use.
func openSession(ctx context.Context, c *helper.Client, device, want string) (*helper.Session, startTiming, error) {
	var tm startTiming
	ctx, cancel := context.WithTimeout(ctx, remoteOpTimeout)
	defer cancel()
	t0 := time.Now()
	st, err := c.Start(ctx, wire.SessionStartRequest{Device: device, Mode: "unattended", Reason: "benchmark"})
	if err != nil {
		return nil, tm, fmt.Errorf("start: %w", err)
	}
	tm.start = time.Since(t0)
	sess, err := c.Connect(ctx, st, frame.Greeting{Rows: 24, Cols: 80})
	if err != nil {
		return nil, tm, fmt.Errorf("connect: %w", err)
	}
	tm.connect = time.Since(t0) - tm.start
	if got := sess.Connection.Transport; got != want {
		sess.Close()
		return nil, tm, fmt.Errorf("session %s went %s, want %s (%s)", st.Session.ID, got, want, sess.Connection.Lost())
	}
	_ = sess.SetReadDeadline(time.Now().Add(remoteOpTimeout))
	for {
		ev, err := sess.Next()
		if err != nil {
			sess.Close()
			return nil, tm, fmt.Errorf("waiting for the shell's first byte: %w", err)
		}
		if ev.Type == frame.End {
			sess.Close()
			return nil, tm, fmt.Errorf("the device ended the session: %s %s", ev.Ending.Outcome, ev.Ending.Message)
		}
		if ev.Type == frame.Data && len(ev.Data) > 0 {
			break
		}
	}
	tm.total = time.Since(t0)
	tm.first = tm.total - tm.start - tm.connect
	_ = sess.SetReadDeadline(time.Time{})
	return sess, tm, nil
}

// closeSession ends a session as the helper does and reads until the device's End.
func closeSession(sess *helper.Session) {
	_ = sess.End("benchmark done")
	_ = sess.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		ev, err := sess.Next()
		if err != nil || ev.Type == frame.End {
			break
		}
	}
	sess.Close()
}

// readUntil reads session output until it contains marker, and returns the bytes read.
func readUntil(sess *helper.Session, marker []byte, timeout time.Duration) (int64, error) {
	n, _, err := readFrames(sess, marker, timeout)
	return n, err
}

// readFrames is readUntil that also counts the Data frames.
func readFrames(sess *helper.Session, marker []byte, timeout time.Duration) (int64, int, error) {
	_ = sess.SetReadDeadline(time.Now().Add(timeout))
	defer sess.SetReadDeadline(time.Time{})
	var n int64
	var frames int
	var tail []byte
	for {
		ev, err := sess.Next()
		if err != nil {
			return n, frames, err
		}
		if ev.Type == frame.End {
			return n, frames, fmt.Errorf("the device ended the session: %s %s", ev.Ending.Outcome, ev.Ending.Message)
		}
		if ev.Type != frame.Data {
			continue
		}
		n += int64(len(ev.Data))
		frames++
		tail = append(tail, ev.Data...)
		if bytes.Contains(tail, marker) {
			return n, frames, nil
		}
		if len(tail) > len(marker) {
			tail = append(tail[:0], tail[len(tail)-len(marker):]...)
		}
	}
}

func latencies(d []time.Duration) measurement {
	l := slices.Clone(d)
	slices.Sort(l)
	return measurement{count: len(l), latency: l}
}

func p99Row(name string, m measurement, target float64) Row {
	p50, p99 := m.percentile(0.50), m.percentile(0.99)
	row := Row{Name: name, Value: p99, Unit: "ms p99", Count: m.count}
	if target > 0 {
		row = targetRow(name, "ms p99", p99, m.count, target, true)
	}
	row.P50ms, row.P99ms = &p50, &p99
	return row
}

func runRemote(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "remote"}
	if *remoteRuns < 50 || *remoteKeys < 50 {
		return res, errors.New("-remote-runs and -remote-keys must be at least 50")
	}
	if *remoteBulkRuns < 1 || *remoteSessions < 0 {
		return res, errors.New("-remote-bulk-runs must be at least 1 and -remote-sessions 0 or more")
	}
	if *remoteSessions > 0 { // fail before the long phases
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return res, err
		}
		// this process: the helper's leg, the device's leg and the shell's PTY per session
		if need := uint64(3*(*remoteSessions+remoteSessionWarmup) + 1000); lim.Max < need {
			return res, fmt.Errorf("-remote-sessions %d needs at least %d file descriptors, the hard limit (ulimit -Hn) is %d: raise it or lower -remote-sessions", *remoteSessions, need, lim.Max)
		}
	}
	tmp, err := os.MkdirTemp("", "ibcm-bench-remote-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	shell, restore, err := cleanRootHome(tmp)
	if err != nil {
		return res, err
	}
	defer restore()

	// 1-3 on a site in this process; its agent and shells are stopped before 4.
	rows, notes, err := remotePaths(ctx, tmp, shell, progress)
	if err != nil {
		return res, err
	}
	res.Rows, res.Notes = rows, notes

	// 4. Concurrent relayed sessions on an MP in its own process.
	if *remoteSessions > 0 {
		rows, notes, err := remoteMemory(ctx, tmp, progress)
		if err != nil {
			return res, fmt.Errorf("concurrent sessions: %w", err)
		}
		res.Rows = append(res.Rows, rows...)
		res.Notes = append(res.Notes, notes...)
	}
	return res, nil
}

// remotePaths measures session start, keystroke round trips and bulk output through the
// relay and direct, on a site in this process.
func remotePaths(ctx context.Context, tmp, shell string, progress io.Writer) ([]Row, []string, error) {
	res := Result{Suite: "remote"}
	fmt.Fprintln(progress, "remote: starting a site on sqlite (CA and MP in this process)")
	s, err := startSiteWith(ctx, site.InitOptions{Store: "sqlite"}, "mp-internet")
	if err != nil {
		return nil, nil, err
	}
	defer s.stop()
	directPort, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	rc := wire.RemoteControlSettings{Enabled: true, AccessLevel: "full", PromptUser: false, AllowUnattended: true,
		ConsentTimeout: "30s", AllowDirect: true, DirectPort: directPort, AllowChat: true}
	fmt.Fprintln(progress, "remote: enrolling a device and running the agent on the intranet (in-process DNS)")
	env, err := startRemoteEnv(ctx, s, filepath.Join(tmp, "paths"), rc)
	if err != nil {
		return nil, nil, err
	}
	defer env.stop()
	paths := []struct {
		name, transport string
		c               *helper.Client
	}{{"relay", wire.TransportRelay, env.internet}, {"direct", wire.TransportDirect, env.intranet}}

	// 1. Session start.
	fmt.Fprintf(progress, "remote: %d session starts on each path (relay and direct alternating)\n", *remoteRuns)
	var starts [2][]startTiming
	for i := range remoteWarmup + *remoteRuns {
		for p, path := range paths {
			sess, tm, err := openSession(ctx, path.c, env.device, path.transport)
			if err != nil {
				return nil, nil, fmt.Errorf("session start, %s, run %d: %w", path.name, i, err)
			}
			closeSession(sess)
			if i >= remoteWarmup {
				starts[p] = append(starts[p], tm)
			}
		}
	}
	var startM [2]measurement
	for p := range paths {
		var d []time.Duration
		for _, tm := range starts[p] {
			d = append(d, tm.total)
		}
		startM[p] = latencies(d)
	}
	res.Rows = append(res.Rows,
		p99Row("session start -> first shell byte, relay", startM[0], remoteStartRelayTargetMS),
		p99Row("session start -> first shell byte, direct", startM[1], remoteStartDirectTargetMS))

	// 2. Keystroke round trips: one session on each path, `cat` on a raw PTY echoes.
	fmt.Fprintf(progress, "remote: %d keystroke round trips on each path (alternating)\n", *remoteKeys)
	var keySess [2]*helper.Session
	defer func() {
		for _, ks := range keySess {
			if ks != nil {
				closeSession(ks)
			}
		}
	}()
	for p, path := range paths {
		sess, _, err := openSession(ctx, path.c, env.device, path.transport)
		if err != nil {
			return nil, nil, fmt.Errorf("keystrokes, %s: %w", path.name, err)
		}
		keySess[p] = sess
		if _, err := sess.Write([]byte("stty raw -echo; echo RE''ADY; exec cat\r")); err != nil {
			return nil, nil, err
		}
		if _, err := readUntil(sess, []byte("READY"), remoteOpTimeout); err != nil {
			return nil, nil, fmt.Errorf("keystrokes, %s: waiting for cat: %w", path.name, err)
		}
	}
	var keys [2][]time.Duration
	for i := range remoteWarmup + *remoteKeys {
		for p, path := range paths {
			b := []byte{byte('a' + i%26)}
			t0 := time.Now()
			if _, err := keySess[p].Write(b); err != nil {
				return nil, nil, fmt.Errorf("keystroke, %s: %w", path.name, err)
			}
			if _, err := readUntil(keySess[p], b, 10*time.Second); err != nil {
				return nil, nil, fmt.Errorf("keystroke echo, %s: %w", path.name, err)
			}
			if i >= remoteWarmup {
				keys[p] = append(keys[p], time.Since(t0))
			}
		}
	}
	for p := range keySess {
		closeSession(keySess[p])
		keySess[p] = nil
	}
	keyM := [2]measurement{latencies(keys[0]), latencies(keys[1])}
	added := keyM[0].percentile(0.99) - keyM[1].percentile(0.99)
	res.Rows = append(res.Rows,
		p99Row("keystroke round trip, direct (reference)", keyM[1], 0),
		p99Row("keystroke round trip, relay", keyM[0], 0),
		targetRow("keystroke, relay p99 - direct p99", "ms", added, keyM[0].count, remoteKeyAddedTargetMS, true))

	// 3. Bulk output: 256 MiB of base64 from a process on the PTY.
	fmt.Fprintf(progress, "remote: %d x 256 MiB of shell output on each path (alternating)\n", *remoteBulkRuns)
	bulkCmd := fmt.Sprintf("stty -echo; head -c %d /dev/zero | base64 -w 0; echo; echo DO''NE\r", remoteBulkBytes/4*3)
	var bulkBytes [2]int64
	var bulkTime [2]time.Duration
	var bulkRates [2][]float64
	var bulkCPU [2]time.Duration
	var bulkFrames int
	for i := range *remoteBulkRuns {
		for p, path := range paths {
			sess, _, err := openSession(ctx, path.c, env.device, path.transport)
			if err != nil {
				return nil, nil, fmt.Errorf("bulk, %s, run %d: %w", path.name, i, err)
			}
			cpu0 := selfCPU()
			t0 := time.Now()
			if _, err := sess.Write([]byte(bulkCmd)); err != nil {
				sess.Close()
				return nil, nil, err
			}
			n, frames, err := readFrames(sess, []byte("DONE"), 5*time.Minute)
			bulkFrames += frames
			took := time.Since(t0)
			bulkCPU[p] += selfCPU() - cpu0
			closeSession(sess)
			if err != nil {
				return nil, nil, fmt.Errorf("bulk, %s, run %d: %w", path.name, i, err)
			}
			if n < remoteBulkBytes {
				return nil, nil, fmt.Errorf("bulk, %s, run %d: %d bytes, want at least %d", path.name, i, n, remoteBulkBytes)
			}
			bulkBytes[p] += n
			bulkTime[p] += took
			bulkRates[p] = append(bulkRates[p], float64(n)/1e6/took.Seconds())
		}
	}
	rate := func(p int) float64 { return float64(bulkBytes[p]) / 1e6 / bulkTime[p].Seconds() }
	ratio := 100 * rate(0) / rate(1)
	res.Rows = append(res.Rows,
		Row{Name: "bulk 256 MiB shell output, direct (reference)", Value: rate(1), Unit: "MB/s", Count: *remoteBulkRuns},
		Row{Name: "bulk 256 MiB shell output, relay", Value: rate(0), Unit: "MB/s", Count: *remoteBulkRuns},
		targetRow("bulk, relay / direct", "%", ratio, *remoteBulkRuns, remoteBulkRatioTarget, false))

	res.Notes = append(res.Notes,
		"site: CA + MP on SQLite in this process; the helper is the site's admin (helper.Client: Start + Connect, as `ibcm remote start` does); the device is the real agent (client/agent, in this process, `run --direct-addr 127.0.0.1 --session-shells direct`) enrolled through the CA",
		fmt.Sprintf("device: on the intranet by real detection against an in-process DNS (SRV -> the MP's intranet listener); policy remote_control: unattended allowed, prompt_user false, allow_direct, direct_port %d (listening on 127.0.0.1 only); mode unattended: a new root login shell (%s) on a PTY per session, its home an empty temporary directory (rdevice.PasswdFile: root's entry with that home; this machine's /root/.bashrc runs pyenv init, about 1 s, which is not the product's)", directPort, shell),
		"relay: the helper calls the MP's internet listener (no direct offer), the device's leg is on the intranet listener: helper -TLS- MP -TLS- device, the e2e TLS 1.3 inside; direct: the helper calls the intranet listener, gets 127.0.0.1:port, dials it (relay after relay_after_ms in parallel, not needed)",
	)
	for p, path := range paths {
		var st, cn, fb []time.Duration
		for _, tm := range starts[p] {
			st, cn, fb = append(st, tm.start), append(cn, tm.connect), append(fb, tm.first)
		}
		a, b, c := latencies(st), latencies(cn), latencies(fb)
		res.Notes = append(res.Notes, fmt.Sprintf("start, %-6s p50/p99 ms: POST /v1/admin/sessions %.1f/%.1f + Connect (device told, legs, e2e TLS, hellos) %.1f/%.1f + first shell byte %.1f/%.1f; total max %.1f (%d runs, %d warm-up)",
			path.name, a.percentile(.5), a.percentile(.99), b.percentile(.5), b.percentile(.99), c.percentile(.5), c.percentile(.99), ms(startM[p].latency[len(startM[p].latency)-1]), startM[p].count, remoteWarmup))
	}
	res.Notes = append(res.Notes,
		fmt.Sprintf("keystroke: one byte written by the helper, echoed by `cat` on the device's PTY (`stty raw -echo; exec cat`), until the helper reads it back; %d per path, alternating, %d warm-up; relay p50 %.3f ms / direct p50 %.3f ms",
			keyM[0].count, remoteWarmup, keyM[0].percentile(.5), keyM[1].percentile(.5)),
		fmt.Sprintf("bulk: `head -c %d /dev/zero | base64 -w 0` on the device's PTY (%d bytes of printable output), timed from the command to the marker after it, a fresh session each run; MB/s = 10^6 bytes/s over all runs; per run relay %s, direct %s",
			remoteBulkBytes/4*3, remoteBulkBytes, fmtRates(bulkRates[0]), fmtRates(bulkRates[1])),
		fmt.Sprintf("bulk: every party shares the 2 cores: CPU of this process (MP + agent + helper; not head/base64) %.2f s per GB relayed vs %.2f s per GB direct: the relay adds the MP's copy and two TLS layers (device-MP and MP-helper, around the e2e TLS), so a CPU-bound run is slower by about that; the output comes in Data frames of %.0f bytes on average (PTY reads already queued go out together, up to 32 KiB), each its own TLS record on every hop",
			bulkCPU[0].Seconds()/(float64(bulkBytes[0])/1e9), bulkCPU[1].Seconds()/(float64(bulkBytes[1])/1e9), float64(bulkBytes[0]+bulkBytes[1])/float64(bulkFrames)),
	)

	return res.Rows, res.Notes, nil
}

func fmtRates(r []float64) string {
	var s []string
	for _, x := range r {
		s = append(s, strconv.FormatFloat(x, 'f', 0, 64))
	}
	return strings.Join(s, ", ")
}

// cleanRootHome points rdevice.PasswdFile at a copy of /etc/passwd whose root entry has
// an empty home in tmp, so a session's login shell reads /etc/profile but no dotfiles of
// this machine's root; restore puts the file back. It returns root's shell.
func cleanRootHome(tmp string) (shell string, restore func(), err error) {
	b, err := os.ReadFile(rdevice.PasswdFile)
	if err != nil {
		return "", nil, err
	}
	home := filepath.Join(tmp, "root-home")
	if err := os.Mkdir(home, 0o700); err != nil {
		return "", nil, err
	}
	lines := strings.Split(string(b), "\n")
	found := false
	for i, l := range lines {
		if f := strings.Split(l, ":"); len(f) == 7 && f[2] == "0" {
			f[5], shell, found = home, f[6], true
			lines[i] = strings.Join(f, ":")
		}
	}
	if !found {
		return "", nil, fmt.Errorf("%s has no uid 0", rdevice.PasswdFile)
	}
	path := filepath.Join(tmp, "passwd")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		return "", nil, err
	}
	old := rdevice.PasswdFile
	rdevice.PasswdFile = path
	return shell, func() { rdevice.PasswdFile = old }, nil
}

func freePort() (int, error) {
	addr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}

// liveSession is a relayed session held open with light traffic: a key every second
// (a letter, then a backspace), its output read and dropped.
type liveSession struct {
	s       *helper.Session
	closing atomic.Bool
	done    chan struct{}
}

func (l *liveSession) run(lost *atomic.Int64) {
	go func() {
		defer close(l.done)
		for {
			ev, err := l.s.Next()
			if err != nil || ev.Type == frame.End {
				if !l.closing.Load() {
					lost.Add(1)
				}
				return
			}
		}
	}()
	go func() {
		t := time.NewTimer(time.Duration(rand.Int64N(int64(time.Second))))
		defer t.Stop()
		keys := [][]byte{[]byte("x"), {0x7f}}
		for i := 0; ; i++ {
			select {
			case <-l.done:
				return
			case <-t.C:
			}
			if l.closing.Load() {
				return
			}
			if _, err := l.s.Write(keys[i%2]); err != nil {
				return
			}
			t.Reset(time.Second)
		}
	}()
}

// remoteMemory runs the real ibcm binary as a separate process, holds *remoteSessions
// relayed sessions with light traffic through it, and measures its RSS per session and
// its CPU.
func remoteMemory(ctx context.Context, tmp string, progress io.Writer) ([]Row, []string, error) {
	bin, err := ibcmBinary(ctx, tmp, progress)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(tmp, "site")
	if err := initSiteDir(ctx, bin, dir); err != nil {
		return nil, nil, err
	}
	fmt.Fprintln(progress, "remote: ibcm site up (separate process)")
	up, err := startUp(ctx, bin, dir, filepath.Join(tmp, "site-up.log"), nil)
	if err != nil {
		return nil, nil, err
	}
	defer up.stop()
	pid := up.pid()
	cfg, err := site.Load(filepath.Join(dir, site.FileName))
	if err != nil {
		return nil, nil, err
	}
	s := &runningSite{dir: tmp, cfg: cfg} // not stopped by stop(): up is
	rc := wire.RemoteControlSettings{Enabled: true, AccessLevel: "full", PromptUser: false, AllowUnattended: true,
		ConsentTimeout: "30s", AllowDirect: false, DirectPort: 2701}
	env, err := startRemoteEnv(ctx, s, filepath.Join(tmp, "mem"), rc)
	if err != nil {
		return nil, nil, err
	}
	defer env.stop()

	var (
		mu   sync.Mutex
		live []*liveSession
		lost atomic.Int64
	)
	defer func() { // end every session, a few at a time
		mu.Lock()
		all := live
		live = nil
		mu.Unlock()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for _, l := range all {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				l.closing.Store(true)
				_ = l.s.End("benchmark done")
				select {
				case <-l.done:
				case <-time.After(10 * time.Second):
				}
				l.s.Close()
			}()
		}
		wg.Wait()
	}()
	open := func(n int) error {
		var next atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, remoteOpeners)
		for range remoteOpeners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if i := next.Add(1); i > int64(n) || ctx.Err() != nil {
						return
					}
					sess, _, err := openSession(ctx, env.intranet, env.device, wire.TransportRelay)
					if err != nil {
						errc <- err
						return
					}
					l := &liveSession{s: sess, done: make(chan struct{})}
					mu.Lock()
					live = append(live, l)
					mu.Unlock()
					l.run(&lost)
				}
			}()
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			return err
		}
		return ctx.Err()
	}

	fmt.Fprintf(progress, "remote: warm-up: %d relayed sessions\n", remoteSessionWarmup)
	if err := open(remoteSessionWarmup); err != nil {
		return nil, nil, err
	}
	before, err := stableRSS(ctx, pid)
	if err != nil {
		return nil, nil, err
	}
	n := *remoteSessions
	fmt.Fprintf(progress, "remote: opening %d relayed sessions, a key a second each (MP RSS %.1f MiB)\n", n, float64(before)/(1<<20))
	t0 := time.Now()
	if err := open(n); err != nil {
		return nil, nil, fmt.Errorf("after %d sessions: %w", len(live), err)
	}
	openTime := time.Since(t0)
	after, err := stableRSS(ctx, pid)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(progress, "remote: %d sessions open (MP RSS %.1f MiB); measuring the MP's CPU for %s\n", len(live), float64(after)/(1<<20), *remoteCPUWindow)
	cpu0, err := procCPU(pid)
	if err != nil {
		return nil, nil, err
	}
	w0 := time.Now()
	select {
	case <-time.After(*remoteCPUWindow):
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	cpu1, err := procCPU(pid)
	if err != nil {
		return nil, nil, err
	}
	window := time.Since(w0)
	threads, _ := procStatus(pid, "Threads")
	anon, _ := procStatus(pid, "RssAnon")
	if l := lost.Load(); l > 0 {
		return nil, nil, fmt.Errorf("%d relayed sessions ended while held", l)
	}
	total := len(live)
	perKiB := float64(after-before) / float64(n) / 1024
	cpuSec := (cpu1 - cpu0).Seconds()
	corePct := 100 * cpuSec / window.Seconds()
	perSessMin := cpuSec / (float64(total) * window.Minutes())
	rows := []Row{
		targetRow(fmt.Sprintf("MP RSS per relayed session, both legs (%d)", n), "KiB", perKiB, n, remoteSessionTargetKiB, true),
		{Name: fmt.Sprintf("MP CPU, %d relayed sessions, a key/s each", total), Value: corePct, Unit: "% of a core", Count: total},
		{Name: "MP CPU per session-minute", Value: 1000 * perSessMin, Unit: "ms", Count: total},
	}
	notes := []string{
		fmt.Sprintf("sessions: the real `ibcm site up` (CA + MP, SQLite) in its own process; one real agent (client/agent, in the bench process) serves every session with a real root login shell on a PTY (unattended, no prompt; clean home as above); the helpers (helper.Client, admin identity, intranet listener, relay only: allow_direct false) in the bench process; %d opened in %s (%.0f/s, %d at once)",
			n, openTime.Round(time.Millisecond), float64(n)/openTime.Seconds(), remoteOpeners),
		fmt.Sprintf("sessions: MP VmRSS %.1f MiB after %d warm-up sessions -> %.1f MiB with %d more (RssAnon %.1f MiB; stable: two reads 500 ms apart within 1%%); %d OS threads; each session = the helper's leg + the device's leg, two mutual-TLS connections spliced by the MP",
			float64(before)/(1<<20), remoteSessionWarmup, float64(after)/(1<<20), n, float64(anon)/1024, threads),
		fmt.Sprintf("traffic: each helper types a key every second (a letter, then a backspace, echoed by the shell's readline); MP CPU (utime + stime of /proc/PID/stat) over %s with %d sessions: %.2f s = %.1f%% of a core, %.2f ms per session-minute",
			window.Round(time.Millisecond), total, cpuSec, corePct, 1000*perSessMin),
	}
	return rows, notes, nil
}

// procCPU is the user + system CPU time a process has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// the fields after the command's closing parenthesis; utime and stime are the 12th and 13th
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks, nil
}

// selfCPU is the user + system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
