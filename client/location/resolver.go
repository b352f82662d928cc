package location

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// resolver asks every nameserver of resolv.conf at once; the first positive answer wins.
type resolver struct {
	servers  []string // "IP:port"
	timeout  time.Duration
	attempts int
}

// answer is a nameserver's reply to one query.
type answer struct {
	msg    *dns.Msg
	server string
	others []string // when msg is negative: what the other nameservers did, "server: why"
}

// errNoNameservers is the outcome of every query when resolv.conf named none.
var errNoNameservers = errors.New("no nameservers to ask")

// exchange asks every nameserver for name (fully qualified) and qtype at once, each with
// r.attempts attempts of r.timeout. The first positive answer (records of qtype for name)
// wins at once. A negative one (NXDOMAIN, or NOERROR without such records) wins only when
// no other nameserver has a positive answer: on a split-DNS laptop the local resolver
// knows nothing of the intranet zone and the VPN's does, whichever answers first. So a
// negative answer waits for the others, a black-holed one at most its attempts of the
// short timeout. SERVFAIL and timeouts are retried; REFUSED and the like end that
// nameserver's part.
func (r *resolver) exchange(ctx context.Context, name string, qtype uint16) (answer, error) {
	if len(r.servers) == 0 {
		return answer{}, errNoNameservers
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the nameservers still being asked once one answered
	type outcome struct {
		answer
		err error
	}
	out := make(chan outcome, len(r.servers))
	for _, s := range r.servers {
		go func() {
			m, err := r.ask(ctx, s, name, qtype)
			out <- outcome{answer{msg: m, server: s}, err}
		}()
	}
	var negative *answer
	var errs []string
	for range r.servers {
		o := <-out
		switch {
		case o.err != nil:
			errs = append(errs, fmt.Sprintf("%s: %v", o.server, o.err))
		case len(records(o.msg, name, qtype)) > 0:
			return o.answer, nil
		case negative == nil:
			negative = &o.answer
		default:
			errs = append(errs, fmt.Sprintf("%s: %s too", o.server, negativeText(o.msg, qtype)))
		}
	}
	if negative != nil {
		negative.others = errs
		return *negative, nil
	}
	return answer{}, errors.New(strings.Join(errs, "; "))
}

// negativeText says what a negative answer was.
func negativeText(m *dns.Msg, qtype uint16) string {
	if m.Rcode == dns.RcodeNameError {
		return "NXDOMAIN"
	}
	return "no " + dns.TypeToString[qtype] + " records"
}

// ask asks one nameserver, retrying after a timeout or SERVFAIL.
func (r *resolver) ask(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	var last error
	for attempt := 1; attempt <= r.attempts; attempt++ {
		m, err := r.askOnce(ctx, server, name, qtype)
		if expired(ctx) {
			if err == nil && (m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError) {
				return m, nil
			}
			return nil, fmt.Errorf("abandoned in attempt %d: %w", attempt, cause(ctx))
		}
		switch {
		case err != nil:
			last = err
			continue
		case m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError:
			return m, nil
		case m.Rcode == dns.RcodeServerFailure:
			last = errors.New("SERVFAIL")
			continue
		default:
			return nil, errors.New(dns.RcodeToString[m.Rcode])
		}
	}
	if r.attempts > 1 {
		return nil, fmt.Errorf("%w (%d attempts)", last, r.attempts)
	}
	return nil, last
}

// askOnce sends one query over UDP (again over TCP when the answer was truncated) and
// waits at most r.timeout.
func (r *resolver) askOnce(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(1232, false)
	m, err := r.exchangeOver(ctx, "udp", server, q)
	if err == nil && m.Truncated {
		m, err = r.exchangeOver(ctx, "tcp", server, q)
	}
	if err != nil {
		return nil, err
	}
	if len(m.Question) != 1 || !strings.EqualFold(m.Question[0].Name, name) || m.Question[0].Qtype != qtype {
		return nil, errors.New("the answer is for another question")
	}
	return m, nil
}

func (r *resolver) exchangeOver(ctx context.Context, network, server string, q *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: r.timeout}
	co, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, describeNetErr(ctx, err, r.timeout)
	}
	defer co.Close()
	// miekg/dns heeds only the context's deadline; closing the connection also ends the
	// wait when the query is abandoned because another nameserver answered.
	stop := context.AfterFunc(ctx, func() { _ = co.Close() })
	defer stop()
	m, _, err := c.ExchangeWithConnContext(ctx, q, co)
	if err != nil {
		return nil, describeNetErr(ctx, err, r.timeout)
	}
	return m, nil
}

// describeNetErr turns timeouts into "no answer within 250ms" rather than socket detail.
func describeNetErr(ctx context.Context, err error, timeout time.Duration) error {
	var ne net.Error
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("no answer within %s", timeout)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// records returns the answers to name of type qtype in m, following CNAMEs in the answer.
func records(m *dns.Msg, name string, qtype uint16) []dns.RR {
	owners := map[string]bool{dns.CanonicalName(name): true}
	for range 8 { // CNAME chains are short; bounded against loops
		grew := false
		for _, rr := range m.Answer {
			if c, ok := rr.(*dns.CNAME); ok && owners[dns.CanonicalName(c.Hdr.Name)] && !owners[dns.CanonicalName(c.Target)] {
				owners[dns.CanonicalName(c.Target)] = true
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	var out []dns.RR
	for _, rr := range m.Answer {
		if rr.Header().Rrtype == qtype && owners[dns.CanonicalName(rr.Header().Name)] {
			out = append(out, rr)
		}
	}
	return out
}

// query asks for name and qtype and records the step; it returns the matching records.
func (r *resolver) query(ctx context.Context, ev *recorder, name string, qtype uint16) ([]dns.RR, error) {
	start := time.Now()
	step := Step{Kind: KindDNS, Target: name + " " + dns.TypeToString[qtype]}
	a, err := r.exchange(ctx, name, qtype)
	var rrs []dns.RR
	if err != nil {
		step.Error = err.Error()
	} else {
		rrs = records(a.msg, name, qtype)
		var parts []string
		for _, rr := range rrs {
			parts = append(parts, strings.TrimPrefix(rr.String(), rr.Header().String()))
		}
		switch {
		case len(rrs) > 0:
			step.Result = fmt.Sprintf("%s answered: %s", a.server, strings.Join(parts, ", "))
		case a.msg.Rcode == dns.RcodeNameError:
			step.Result = fmt.Sprintf("%s answered NXDOMAIN", a.server)
		default:
			step.Result = fmt.Sprintf("%s answered: no %s records", a.server, dns.TypeToString[qtype])
		}
		if len(rrs) == 0 && len(a.others) > 0 {
			step.Result += "; " + strings.Join(a.others, "; ")
		}
	}
	step.Took = time.Since(start)
	ev.add(step)
	return rrs, err
}

// resolutionDelay is how long lookupHost waits for the other address family once one has
// answered with addresses: RFC 8305's recommended Resolution Delay. Since a negative answer
// now waits for every nameserver, an AAAA query that one nameserver answers "none" and a
// black hole never answers would otherwise hold up an A answer for the black hole's
// timeouts.
const resolutionDelay = 50 * time.Millisecond

// errResolutionDelay is why the other address family's query is abandoned.
var errResolutionDelay = fmt.Errorf("the other address family answered first (waited %s, RFC 8305)", resolutionDelay)

// lookupHost returns the addresses of host: the IP itself for an IP literal, otherwise
// the A and AAAA records (asked at the same time) from the nameservers, IPv4 first. Once
// one of them has addresses, the other gets resolutionDelay more.
func (r *resolver) lookupHost(ctx context.Context, ev *recorder, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	name := dns.Fqdn(host)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type result struct {
		rrs []dns.RR
		err error
	}
	var res [2]chan result
	for i, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		res[i] = make(chan result, 1)
		go func() {
			rrs, err := r.query(ctx, ev, name, qtype)
			res[i] <- result{rrs, err}
		}()
	}
	var got [2]*result
	var delay <-chan time.Time
	for pending := 2; pending > 0; {
		select {
		case x := <-res[0]:
			got[0], res[0] = &x, nil
		case x := <-res[1]:
			got[1], res[1] = &x, nil
		case <-delay:
			cancel(errResolutionDelay) // the query still out ends at once and records why
			delay = nil
			continue
		}
		pending--
		if delay == nil && pending > 0 && ((got[0] != nil && len(got[0].rrs) > 0) || (got[1] != nil && len(got[1].rrs) > 0)) {
			delay = time.After(resolutionDelay)
		}
	}
	var addrs []netip.Addr
	var errs []error
	for _, r := range got {
		if r.err != nil { // only reported when there are no addresses, so never errResolutionDelay
			errs = append(errs, r.err)
		}
		for _, rr := range r.rrs {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				addrs = append(addrs, a.Unmap())
			}
		}
	}
	if len(addrs) == 0 {
		if len(errs) > 0 {
			return nil, fmt.Errorf("resolving %s: %w", host, errors.Join(errs...))
		}
		return nil, fmt.Errorf("%s has no A or AAAA records", host)
	}
	return addrs, nil
}

// DialContext returns a dial function that looks names up through the nameservers of
// resolvConf, like everything else the agent resolves (DESIGN.md §7), and dials the
// addresses in turn. IP literals are dialed as they are.
func DialContext(resolvConf string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		servers, _ := readResolvConf(resolvConf)
		r := &resolver{servers: servers, timeout: DefaultDNSTimeout, attempts: DefaultDNSAttempts}
		addrs, err := r.lookupHost(ctx, &recorder{}, host)
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		var errs []error
		for _, a := range addrs {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}
