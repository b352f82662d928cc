package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

var locationSuite = Suite{
	Name:  "location",
	Title: "location detection: decide intranet, decide internet with the intranet DNS black-holed, resolv.conf change to switch (real agent)",
	Run:   runLocation,
}

var locationRuns = flag.Int("location-runs", 60, "location suite: measured runs of each row (at least 50)")

const (
	locIntranetTargetMS  = 100  // p99 of deciding intranet
	locBlackholeTargetMS = 600  // p99 of deciding internet with the intranet DNS black-holed
	locSwitchTargetMS    = 1000 // p99 from a resolv.conf change to the agent's switch
	locWarmup            = 3    // runs of each row before the measured ones, not counted
	locPoll              = 5 * time.Millisecond
	locSwitchTimeout     = 10 * time.Second // a switch not seen by then fails the run
)

// locSample is one measured run: its duration and, for a Detect, the decision.
type locSample struct {
	took time.Duration
	d    location.Decision
}

func runLocation(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "location"}
	runs := *locationRuns
	if runs < 50 {
		return res, errors.New("-location-runs must be at least 50")
	}

	fmt.Fprintln(progress, "location: starting a site on sqlite (CA and MP in this process)")
	s, err := startSiteWith(ctx, site.InitOptions{Store: "sqlite"}, "mp-intranet")
	if err != nil {
		return res, err
	}
	defer s.stop()
	_, mpPort, err := net.SplitHostPort(strings.TrimPrefix(s.cfg.MP.IntranetURL, "https://"))
	if err != nil {
		return res, fmt.Errorf("the MP's intranet URL %q: %w", s.cfg.MP.IntranetURL, err)
	}
	port, _ := strconv.ParseUint(mpPort, 10, 16)

	// A device enrolled through the CA's enroll API into a client state directory.
	tmp, err := os.MkdirTemp("", "ibcm-bench-loc-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	dev := filepath.Join(tmp, "dev")
	id, err := enrollAgentDevice(ctx, s, dev)
	if err != nil {
		return res, err
	}
	b := id.Bootstrap
	if b == nil || len(b.IntranetDNSSuffixes) == 0 {
		return res, errors.New("the enrollment answer carried no location settings (bootstrap)")
	}
	suffix := strings.TrimSuffix(b.IntranetDNSSuffixes[0], ".")
	srvName := location.DefaultSRVName
	if len(b.SRVNames) > 0 {
		srvName = b.SRVNames[0]
	}

	// The three nameservers: the intranet DNS, a resolver without the zone, a black hole.
	intranetDNS, err := startDNS(intranetZone(dns.Fqdn(srvName+"."+suffix), dns.Fqdn(s.cfg.Site.IntranetName), uint16(port)))
	if err != nil {
		return res, err
	}
	defer intranetDNS.Shutdown()
	elsewhereDNS, err := startDNS(refuseAll)
	if err != nil {
		return res, err
	}
	defer elsewhereDNS.Shutdown()
	hole, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer hole.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := hole.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	intranetNS, elsewhereNS := intranetDNS.PacketConn.LocalAddr().String(), elsewhereDNS.PacketConn.LocalAddr().String()

	// The detection settings the agent builds from its identity (no policy yet: bootstrap).
	cfg := location.Config{SiteCode: b.SiteCode, IntranetSuffixes: b.IntranetDNSSuffixes, SRVNames: b.SRVNames,
		InternetMPs: b.InternetMPs, Roots: id.Roots, ClientCert: &id.Certificate}
	intraConf, holeConf := filepath.Join(tmp, "resolv.intranet.conf"), filepath.Join(tmp, "resolv.hole.conf")
	if err := writeResolvConf(intraConf, intranetNS); err != nil {
		return res, err
	}
	if err := writeResolvConf(holeConf, hole.LocalAddr().String()); err != nil {
		return res, err
	}
	wantMP := "https://" + net.JoinHostPort(s.cfg.Site.IntranetName, mpPort)

	// 1. Deciding intranet.
	fmt.Fprintf(progress, "location: %d detections against the intranet DNS\n", runs)
	intra, err := detectRuns(ctx, cfg, intraConf, runs, func(d location.Decision) error {
		if d.Location != wire.Intranet || d.MP != wantMP {
			return fmt.Errorf("decided %s %q, want intranet %s: %s", d.Location, d.MP, wantMP, d.Reason)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("deciding intranet: %w", err)
	}

	// 2. Deciding internet with the intranet DNS black-holed.
	fmt.Fprintf(progress, "location: %d detections with a black-holed nameserver\n", runs)
	inet, err := detectRuns(ctx, cfg, holeConf, runs, func(d location.Decision) error {
		if d.Location != wire.Internet {
			return fmt.Errorf("decided %s, want internet: %s", d.Location, d.Reason)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("deciding internet: %w", err)
	}

	// 3. A real agent: resolv.conf replaced, until its status shows the new location.
	fmt.Fprintf(progress, "location: agent: %d resolv.conf switches, intranet <-> internet\n", runs)
	sw, watchEvery, err := switchRuns(ctx, dev, filepath.Join(tmp, "resolv.conf"), intranetNS, elsewhereNS, runs)
	if err != nil {
		return res, fmt.Errorf("agent switch: %w", err)
	}

	rows := []struct {
		name    string
		samples []locSample
		target  float64
	}{
		{"decide intranet (SRV + A + MP probe)", intra, locIntranetTargetMS},
		{"decide internet, intranet DNS black-holed", inet, locBlackholeTargetMS},
		{"resolv.conf change -> agent switched", sw, locSwitchTargetMS},
	}
	for _, r := range rows {
		lat := make([]time.Duration, len(r.samples))
		for i, x := range r.samples {
			lat[i] = x.took
		}
		slices.Sort(lat)
		m := measurement{count: len(lat), latency: lat}
		p50, p99, mx := m.percentile(0.50), m.percentile(0.99), ms(lat[len(lat)-1])
		row := targetRow(r.name, "ms p99", p99, len(lat), r.target, true)
		row.P50ms, row.P99ms = &p50, &p99
		res.Rows = append(res.Rows, row)
		verdict := "PASS"
		if !*row.Pass {
			verdict = "FAIL"
		}
		res.Notes = append(res.Notes, fmt.Sprintf("%-42s p50 %7.2f  p99 %7.2f  max %7.2f ms  runs %d  target p99 <= %.0f ms: %s",
			r.name+":", p50, p99, mx, len(lat), r.target, verdict))
	}
	res.Notes = append(res.Notes,
		"for reference: Configuration Manager refreshes service location every 25 hours and on network change",
		fmt.Sprintf("site: CA + MP on SQLite in this process (site code %s, intranet name %s, internet MP %s); a device enrolled with client.Enroll (enroll API, admin-made token); detection settings from its bootstrap: suffix %s, SRV %s",
			b.SiteCode, s.cfg.Site.IntranetName, strings.Join(b.InternetMPs, ", "), suffix, srvName),
		fmt.Sprintf("DNS: in-process github.com/miekg/dns servers on 127.0.0.1/UDP (same protocol as the BIND of the integration tests, keeps the run self-contained): intranet zone %s SRV -> %s:%s, A %s -> 127.0.0.1; the resolver without the zone answers REFUSED to everything; the black hole reads and drops every query",
			dns.Fqdn(srvName+"."+suffix), s.cfg.Site.IntranetName, mpPort, s.cfg.Site.IntranetName),
		fmt.Sprintf("detect: location.Detect with the defaults (DNS %s x %d attempts per nameserver, probe %s, budget %s); the internet MP is probed at the same time; %d warm-up runs per row not counted",
			location.DefaultDNSTimeout, location.DefaultDNSAttempts, location.DefaultProbeTimeout, location.DefaultBudget, locWarmup),
		fmt.Sprintf("switch: client/agent in this process (what `ibcm-client run` runs) against the site; WatchEvery %s (the default: part of the latency), hysteresis 2 sightings (the agent confirms a new result 100 ms after the first); each run replaces resolv.conf atomically (temp + rename) and polls Status().Location every %s; a random 0-%s pause between runs",
			watchEvery, locPoll, watchEvery),
	)
	res.Notes = append(res.Notes, evidenceNotes("decide intranet", intra)...)
	res.Notes = append(res.Notes, evidenceNotes("decide internet, black hole", inet)...)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// enrollAgentDevice makes a one-use client token with the admin identity and enrolls a
// device into dir with client.Enroll, as `ibcm-client enroll` does.
func enrollAgentDevice(ctx context.Context, s *runningSite, dir string) (*client.Identity, error) {
	admin, err := s.client(1, true)
	if err != nil {
		return nil, err
	}
	defer admin.CloseIdleConnections()
	var tok wire.TokenCreated
	if err := postJSON(ctx, admin, s.cfg.CA.URL+"/v1/admin/tokens", wire.TokenCreateRequest{Profile: "client", Uses: 1, TTL: "1h"}, http.StatusCreated, &tok); err != nil {
		return nil, fmt.Errorf("creating a client token: %w", err)
	}
	rootPEM, err := os.ReadFile(s.cfg.Path(s.cfg.CA.RootCert))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		return nil, errors.New("no certificate in the site's root file")
	}
	sum := sha256.Sum256(blk.Bytes)
	id, err := client.Enroll(ctx, client.EnrollOptions{Dir: dir, CAURL: s.cfg.CA.URL, Token: tok.Secret,
		RootSHA256: hex.EncodeToString(sum[:]), Name: "bench-loc", FQDN: "bench-loc.corp.test"})
	if err != nil {
		return nil, fmt.Errorf("enrolling the device: %w", err)
	}
	return id, nil
}

// startDNS serves h on a free 127.0.0.1 UDP port.
func startDNS(h dns.HandlerFunc) (*dns.Server, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		pc.Close()
		return nil, errors.New("the DNS server did not start within 5s")
	}
	return srv, nil
}

// intranetZone answers SRV srv -> target:port and A target -> 127.0.0.1 authoritatively,
// NOERROR without records for other types of those names, NXDOMAIN for any other name.
func intranetZone(srv, target string, port uint16) dns.HandlerFunc {
	return func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		if len(q.Question) == 1 {
			qq := q.Question[0]
			hdr := dns.RR_Header{Name: qq.Name, Class: dns.ClassINET, Ttl: 60}
			switch name := dns.CanonicalName(qq.Name); {
			case name == dns.CanonicalName(srv):
				if qq.Qtype == dns.TypeSRV {
					hdr.Rrtype = dns.TypeSRV
					m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr, Priority: 0, Weight: 0, Port: port, Target: target})
				}
			case name == dns.CanonicalName(target):
				if qq.Qtype == dns.TypeA {
					hdr.Rrtype = dns.TypeA
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
				}
			default:
				m.Rcode = dns.RcodeNameError
			}
		}
		_ = w.WriteMsg(m)
	}
}

// refuseAll is a resolver that knows nothing of the intranet zone and serves no one.
func refuseAll(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetRcode(q, dns.RcodeRefused)
	_ = w.WriteMsg(m)
}

// writeResolvConf replaces path atomically (temp + rename), as resolvconf and
// NetworkManager do, with one nameserver.
func writeResolvConf(path, nameserver string) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte("# written by the benchmark\nnameserver "+nameserver+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// detectRuns times location.Detect with resolv.conf at conf, locWarmup runs not counted
// and then runs measured; check vets every decision.
func detectRuns(ctx context.Context, cfg location.Config, conf string, runs int, check func(location.Decision) error) ([]locSample, error) {
	cfg.ResolvConf = conf
	var out []locSample
	for i := range locWarmup + runs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		d := location.Detect(ctx, cfg)
		took := time.Since(t0)
		if err := check(d); err != nil {
			return nil, fmt.Errorf("run %d: %w", i, err)
		}
		if i >= locWarmup {
			out = append(out, locSample{took: took, d: d})
		}
	}
	return out, nil
}

// switchRuns runs the agent on dev with resolv.conf at conf and, run after run, points
// conf at the other nameserver and times until the agent's status shows the new location.
// It returns the samples and the agent's resolv.conf watch interval.
func switchRuns(ctx context.Context, dev, conf, intranetNS, elsewhereNS string, runs int) ([]locSample, time.Duration, error) {
	if err := writeResolvConf(conf, intranetNS); err != nil {
		return nil, 0, err
	}
	o := agent.Options{Dir: dev, ResolvConf: conf, Log: zerolog.Nop()}
	a, err := agent.New(o)
	if err != nil {
		return nil, 0, err
	}
	watchEvery := location.DefaultWatchInterval // what agent.New takes for a zero WatchEvery
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()

	waitFor := func(want string, within time.Duration) (time.Duration, error) {
		t0 := time.Now()
		for {
			if a.Status().Location == want {
				return time.Since(t0), nil
			}
			if time.Since(t0) > within {
				st := a.Status()
				return 0, fmt.Errorf("location %q after %s, want %s (%s)", st.Location, within, want, st.Reason)
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case err := <-done:
				return 0, fmt.Errorf("the agent stopped: %v", err)
			case <-time.After(locPoll):
			}
		}
	}
	if _, err := waitFor(wire.Intranet, locSwitchTimeout); err != nil {
		return nil, 0, fmt.Errorf("the agent's first detection: %w", err)
	}
	var out []locSample
	want := wire.Intranet
	for i := range locWarmup + runs {
		// a random pause, so the change falls anywhere in the watch interval
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(time.Duration(rand.Int64N(int64(watchEvery)))):
		}
		ns := intranetNS
		if want == wire.Intranet {
			want, ns = wire.Internet, elsewhereNS
		} else {
			want = wire.Intranet
		}
		t0 := time.Now()
		if err := writeResolvConf(conf, ns); err != nil {
			return nil, 0, err
		}
		if _, err := waitFor(want, locSwitchTimeout); err != nil {
			return nil, 0, fmt.Errorf("run %d: %w", i, err)
		}
		took := time.Since(t0)
		if i >= locWarmup {
			out = append(out, locSample{took: took})
		}
	}
	return out, watchEvery, nil
}

// evidenceNotes says where a row's time goes: for each kind of step (and DNS question),
// the median and slowest time over the runs.
func evidenceNotes(label string, samples []locSample) []string {
	type agg struct {
		key  string
		took []time.Duration
		errs int
	}
	var order []string
	by := map[string]*agg{}
	for _, s := range samples {
		for _, st := range s.d.Evidence {
			key := st.Kind
			if st.Kind == location.KindDNS {
				key += " " + st.Target
			} else if st.Kind == location.KindProbe {
				key += " " + st.Target
			}
			a := by[key]
			if a == nil {
				a = &agg{key: key}
				by[key] = a
				order = append(order, key)
			}
			a.took = append(a.took, st.Took)
			if !st.OK() {
				a.errs++
			}
		}
	}
	if len(order) == 0 {
		return nil
	}
	notes := []string{label + ": evidence steps, p50 / max ms over the runs (steps run concurrently):"}
	for _, k := range order {
		a := by[k]
		slices.Sort(a.took)
		m := measurement{count: len(a.took), latency: a.took}
		line := fmt.Sprintf("    %-62s %8.2f / %8.2f  (%d steps", k, m.percentile(0.5), ms(a.took[len(a.took)-1]), len(a.took))
		if a.errs > 0 {
			line += fmt.Sprintf(", %d failed", a.errs)
		}
		notes = append(notes, line+")")
	}
	if last := samples[len(samples)-1].d; last.Reason != "" {
		notes = append(notes, "    last decision: "+last.Location+" "+last.MP+": "+last.Reason)
	}
	return notes
}
