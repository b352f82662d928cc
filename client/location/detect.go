package location

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// errDone is why the lookups and probes still out are abandoned once an MP proved itself.
var errDone = errors.New("an MP proved itself")

// errIntranetFirst is why the internet probes are abandoned once an intranet MP proved itself.
var errIntranetFirst = errors.New("an intranet MP proved itself first")

// recorder collects the steps of one line of enquiry, from several goroutines, in the
// order they finish.
type recorder struct {
	mu    sync.Mutex
	steps []Step
}

func (r *recorder) add(s Step) {
	r.mu.Lock()
	r.steps = append(r.steps, s)
	r.mu.Unlock()
}

func (r *recorder) list() []Step {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.steps)
}

// detector is one run of Detect.
type detector struct {
	cfg  Config
	dns  *resolver
	now  func() time.Time
	intn func(int) int // randomness of the RFC 2782 weighted order
}

// found is the outcome of looking for an MP: its URL, or why none was found.
type found struct {
	mp   string // https://host:port, "" when none proved itself
	addr string // the address:port its probe succeeded on
	why  string // one line: what was found, or what went wrong
}

// Detect decides whether the device is on the intranet or the internet and picks the MP,
// within cfg.Budget (DESIGN.md §7). It never fails: when nothing works the decision is
// internet with no MP, and Reason and Evidence say why.
func Detect(ctx context.Context, cfg Config) Decision {
	return detect(ctx, cfg, time.Now, rand.IntN)
}

func detect(ctx context.Context, cfg Config, now func() time.Time, intn func(int) int) Decision {
	start := time.Now()
	cfg = cfg.withDefaults()
	finish := func(d Decision) Decision {
		d.Took = time.Since(start)
		return d
	}
	if err := cfg.Validate(); err != nil {
		return finish(Decision{Location: wire.Internet, Reason: "location settings: " + err.Error()})
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Budget, fmt.Errorf("the %s budget ran out", cfg.Budget))
	defer cancel()

	rcStart := time.Now()
	servers, rcStep := readResolvConf(cfg.ResolvConf)
	rcStep.Took = time.Since(rcStart)
	d := &detector{
		cfg:  cfg,
		dns:  &resolver{servers: servers, timeout: cfg.DNSTimeout, attempts: cfg.DNSAttempts},
		now:  now,
		intn: intn,
	}
	// The internet MPs are probed at the same time as the intranet is looked for.
	var intraEv, inetEv recorder
	inetCtx, stopInet := context.WithCancelCause(ctx)
	defer stopInet(nil)
	inetDone := make(chan found, 1)
	go func() { inetDone <- d.internet(inetCtx, &inetEv) }()
	evidence := func() []Step {
		return append(append([]Step{rcStep}, intraEv.list()...), inetEv.list()...)
	}
	internet := func(why string) Decision {
		inet := <-inetDone
		reason := why + "; " + inet.why
		return finish(Decision{Location: wire.Internet, MP: inet.mp, Addr: inet.addr, Reason: reason, Evidence: evidence()})
	}

	if cfg.AlwaysInternet {
		return internet("always_internet is set: intranet detection skipped")
	}
	intra := d.intranet(ctx, &intraEv)
	if intra.mp == "" {
		if expired(ctx) {
			intra.why += fmt.Sprintf(" (the %s budget ran out)", cfg.Budget)
		}
		return internet("internet: " + intra.why)
	}
	stopInet(errIntranetFirst)
	<-inetDone // its probes end at once; their steps stay in the evidence
	return finish(Decision{Location: wire.Intranet, MP: intra.mp, Addr: intra.addr, Reason: "intranet: " + intra.why, Evidence: evidence()})
}

// intranet asks for the SRV records of every SRV name under every intranet suffix (all at
// once) and probes their targets, name by name in configuration order and within a name in
// RFC 2782 order, until one proves to be an MP of this site.
func (d *detector) intranet(ctx context.Context, ev *recorder) found {
	if len(d.cfg.IntranetSuffixes) == 0 {
		return found{why: "no intranet DNS suffix configured"}
	}
	if len(d.dns.servers) == 0 {
		return found{why: "no nameservers in " + d.cfg.ResolvConf}
	}
	ctx, stop := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()     // the queries still out end at once:
	defer stop(errDone) // their steps stay in the evidence
	type srvAnswer struct {
		name string
		recs []*dns.SRV
		err  error
	}
	var answers []chan srvAnswer
	for _, suffix := range d.cfg.IntranetSuffixes {
		for _, label := range d.cfg.SRVNames {
			name := dns.Fqdn(label + "." + strings.TrimSuffix(suffix, "."))
			ch := make(chan srvAnswer, 1)
			answers = append(answers, ch)
			wg.Go(func() {
				rrs, err := d.dns.query(ctx, ev, name, dns.TypeSRV)
				a := srvAnswer{name: name, err: err}
				for _, rr := range rrs {
					a.recs = append(a.recs, rr.(*dns.SRV))
				}
				ch <- a
			})
		}
	}
	var notes []string
	probed, failed := 0, 0
	for _, ch := range answers {
		a := <-ch
		switch {
		case a.err != nil:
			notes = append(notes, fmt.Sprintf("%s SRV: no nameserver answered", a.name))
			continue
		case len(a.recs) == 0:
			notes = append(notes, fmt.Sprintf("no %s SRV records", a.name))
			continue
		}
		for _, srv := range orderSRV(a.recs, d.intn) {
			host := strings.TrimSuffix(srv.Target, ".")
			probed++
			if addr, ok := d.tryMP(ctx, ev, host, srv.Port, wire.Intranet); ok {
				return found{
					mp:   mpURL(host, srv.Port),
					addr: addr,
					why:  fmt.Sprintf("%s from %s SRV proved to be an intranet listener of an MP of site %s", net.JoinHostPort(host, strconv.Itoa(int(srv.Port))), a.name, d.cfg.SiteCode),
				}
			}
			failed++
		}
	}
	if failed > 0 {
		notes = append(notes, fmt.Sprintf("%d of %d SRV targets failed the probe", failed, probed))
	}
	return found{why: strings.Join(notes, "; ")}
}

// internet probes every internet MP at once and picks the first, in configuration order,
// that proves to be an MP of this site for its own name.
func (d *detector) internet(ctx context.Context, ev *recorder) found {
	if len(d.cfg.InternetMPs) == 0 {
		return found{why: "no internet MP configured"}
	}
	ctx, stop := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop(errDone)
	results := make([]chan string, len(d.cfg.InternetMPs))
	for i, hp := range d.cfg.InternetMPs {
		results[i] = make(chan string, 1)
		wg.Go(func() {
			host, port, _ := splitHostPort(hp) // checked by Validate
			addr, _ := d.tryMP(ctx, ev, host, port, "")
			results[i] <- addr
		})
	}
	for i, ch := range results {
		if addr := <-ch; addr != "" {
			host, port, _ := splitHostPort(d.cfg.InternetMPs[i])
			return found{mp: mpURL(host, port), addr: addr, why: fmt.Sprintf("internet MP %s proved to be an MP of site %s", net.JoinHostPort(host, strconv.Itoa(int(port))), d.cfg.SiteCode)}
		}
	}
	return found{why: "no internet MP proved itself either"}
}

// tryMP resolves host through the nameservers (an IP literal as itself) and probes its
// addresses in turn until one proves it an MP of this site (and, with listener set, that
// listener of it); it returns that address with the port.
func (d *detector) tryMP(ctx context.Context, ev *recorder, host string, port uint16, listener string) (string, bool) {
	addrs, err := d.dns.lookupHost(ctx, ev, host)
	if err != nil {
		return "", false
	}
	for _, a := range addrs {
		if expired(ctx) {
			return "", false
		}
		if d.probe(ctx, ev, host, port, a, listener) == nil {
			return netip.AddrPortFrom(a, port).String(), true
		}
	}
	return "", false
}

// expired tells whether ctx is done or past its deadline (which its Err reports a little
// after the deadline, when its timer has run).
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	deadline, ok := ctx.Deadline()
	return ok && !time.Now().Before(deadline)
}

// cause says why ctx ended: its cause, or DeadlineExceeded when expired saw the deadline
// pass before the context's timer ran.
func cause(ctx context.Context) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return context.DeadlineExceeded
}

func mpURL(host string, port uint16) string {
	return "https://" + net.JoinHostPort(host, strconv.Itoa(int(port)))
}
