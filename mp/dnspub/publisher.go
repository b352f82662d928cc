package dnspub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// ErrTSIG reports that the DNS server did not accept our TSIG signature (wrong
// key name, secret or algorithm, or clocks too far apart), or that its reply
// was not validly signed with our key. Retrying does not help until the
// configuration or the clock is fixed.
var ErrTSIG = errors.New("TSIG authentication failed")

// UpdateError is a DNS server's refusal of an update.
type UpdateError struct {
	Op        string // what the update did: "publish" or "remove"
	Rcode     int    // the reply's RCODE, e.g. dns.RcodeNotAuth
	TSIGError uint16 // the error field of the reply's TSIG (dns.RcodeBadSig, BadKey, BadTime); 0 if none
}

func (e *UpdateError) Error() string {
	msg := "DNS server refused the update: " + rcodeName(e.Rcode)
	if e.TSIGError != 0 {
		msg += fmt.Sprintf(", TSIG error %s", rcodeName(int(e.TSIGError)))
	}
	switch {
	case e.TSIGError != 0:
		msg += " (TSIG key name, secret or algorithm do not match the server's, or the clocks differ)"
	case e.Rcode == dns.RcodeNotAuth:
		msg += " (the server is not authoritative for the zone)"
	case e.Rcode == dns.RcodeRefused:
		msg += " (the zone does not allow updates with this key)"
	case e.Rcode == dns.RcodeNotZone:
		msg += " (a record is outside the zone)"
	}
	return msg
}

// Unwrap returns ErrTSIG when the refusal is a TSIG failure: the reply's
// TSIG carries an error (a NOTAUTH without one means the server is not
// authoritative for the zone).
func (e *UpdateError) Unwrap() error {
	if e.TSIGError != 0 {
		return ErrTSIG
	}
	return nil
}

func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rcode)
}

// Publisher keeps one MP's SRV records published. It is safe for concurrent
// use; Run is meant to be called once.
type Publisher struct {
	cfg     Config // defaults applied, names fully qualified
	alg     string // miekg/dns algorithm name
	records []*dns.SRV
	client  *dns.Client
	log     zerolog.Logger

	now       func() time.Time                    // signing time of the TSIG
	jitter    func(n time.Duration) time.Duration // random duration in [0, n)
	retryBase time.Duration                       // first retry delay of Run
	retryMax  time.Duration                       // cap of Run's retry delay
}

// New returns a Publisher for records, checking cfg and the records (names
// valid and inside cfg.Zone). log should carry the component field.
func New(cfg Config, records []Record, log zerolog.Logger) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(records) == 0 {
		return nil, errors.New("dns publishing: no records to publish")
	}
	cfg = cfg.withDefaults()
	alg, _ := algorithm(cfg.Algorithm) // checked by Validate
	p := &Publisher{
		cfg: cfg,
		alg: alg,
		client: &dns.Client{
			// TCP: an update is not idempotent enough to resend on a lost
			// datagram without thought, and replies are never truncated.
			Net:        "tcp",
			TsigSecret: map[string]string{cfg.KeyName: cfg.Secret},
			Timeout:    cfg.Timeout,
		},
		log:       log,
		now:       time.Now,
		jitter:    func(n time.Duration) time.Duration { return rand.N(n) },
		retryBase: time.Second,
		retryMax:  time.Minute,
	}
	ttl := uint32(cfg.TTL / time.Second)
	for _, r := range records {
		rr, err := r.srv(cfg.Zone, ttl)
		if err != nil {
			return nil, fmt.Errorf("dns publishing: %w", err)
		}
		p.records = append(p.records, rr)
	}
	return p, nil
}

// Publish sends one signed update that, for each record, deletes that exact
// resource record if present and adds it again, so a restarted MP neither
// duplicates its records nor disturbs other MPs' records at the same names.
// A refusal is an *UpdateError (errors.Is(err, ErrTSIG) for a key problem).
func (p *Publisher) Publish(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetUpdate(p.cfg.Zone)
	for _, rr := range p.records {
		// Remove and Insert change the header of the RR they are given.
		m.Remove([]dns.RR{dns.Copy(rr)})
		m.Insert([]dns.RR{dns.Copy(rr)})
	}
	return p.exchange(ctx, "publish", m)
}

// Remove sends one signed update that deletes exactly this MP's resource
// records, leaving other records at the same names alone.
func (p *Publisher) Remove(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetUpdate(p.cfg.Zone)
	for _, rr := range p.records {
		m.Remove([]dns.RR{dns.Copy(rr)})
	}
	return p.exchange(ctx, "remove", m)
}

// exchange signs m, sends it and checks the reply's RCODE and signature.
func (p *Publisher) exchange(ctx context.Context, op string, m *dns.Msg) error {
	m.SetTsig(p.cfg.KeyName, p.alg, 300, p.now().Unix())
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	doing := "publishing"
	if op == "remove" {
		doing = "removing"
	}
	doing = fmt.Sprintf("%s SRV records in zone %s at %s", doing, p.cfg.Zone, p.cfg.Server)
	r, _, err := p.client.ExchangeContext(ctx, m, p.cfg.Server)
	if r == nil || (err != nil && !isTSIGError(err)) {
		if err == nil {
			err = errors.New("no reply")
		}
		return fmt.Errorf("%s: sending the update: %w", doing, err)
	}
	// A refusal is reported as such even when its (typically unsigned) TSIG
	// does not verify: the RCODE says more than the failed check.
	if r.Rcode != dns.RcodeSuccess {
		uerr := &UpdateError{Op: op, Rcode: r.Rcode}
		if t := r.IsTsig(); t != nil {
			uerr.TSIGError = t.Error
		}
		return fmt.Errorf("%s: %w", doing, uerr)
	}
	if err != nil {
		return fmt.Errorf("%s: the reply's signature is not valid (%v): %w", doing, err, ErrTSIG)
	}
	if r.IsTsig() == nil {
		return fmt.Errorf("%s: the reply is not signed: %w", doing, ErrTSIG)
	}
	return nil
}

// isTSIGError reports whether err comes from checking a reply's TSIG
// (miekg/dns answers ErrAuth for any signed NOTAUTH reply).
func isTSIGError(err error) bool {
	for _, e := range []error{dns.ErrAuth, dns.ErrSig, dns.ErrSecret, dns.ErrTime, dns.ErrKeyAlg, dns.ErrNoSig} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Run publishes the records, publishes them again every TTL/2 (so they come
// back if something removed them), retries failures with capped exponential
// backoff and jitter, and when ctx ends removes them with a fresh
// Config.Timeout. It returns after that removal, with its error.
func (p *Publisher) Run(ctx context.Context) error {
	refresh := p.cfg.TTL / 2
	log := p.log.With().Str("dns_server", p.cfg.Server).Str("zone", p.cfg.Zone).Logger()
	failures := 0
	published := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return p.shutdown(ctx, log)
		case <-timer.C:
		}
		err := p.Publish(ctx)
		if ctx.Err() != nil {
			return p.shutdown(ctx, log)
		}
		if err != nil {
			failures++
			delay := p.backoff(failures, refresh)
			log.Warn().Err(err).Int("failures", failures).Int64("retry_in_ms", delay.Milliseconds()).
				Msg("publishing SRV records failed")
			timer.Reset(delay)
			continue
		}
		if !published || failures > 0 {
			log.Info().Strs("records", p.names()).Int("failures", failures).
				Int64("refresh_ms", refresh.Milliseconds()).Msg("published SRV records")
		} else {
			log.Debug().Strs("records", p.names()).Msg("refreshed SRV records")
		}
		published, failures = true, 0
		timer.Reset(refresh)
	}
}

// shutdown removes the records with a fresh timeout that keeps ctx's values.
func (p *Publisher) shutdown(ctx context.Context, log zerolog.Logger) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.Timeout)
	defer cancel()
	if err := p.Remove(ctx); err != nil {
		log.Error().Err(err).Strs("records", p.names()).Msg("removing SRV records on shutdown failed")
		return err
	}
	log.Info().Strs("records", p.names()).Msg("removed SRV records")
	return nil
}

// backoff returns the delay before retry number failures (1, 2, ...):
// retryBase doubled per failure, capped at retryMax and at the refresh
// interval, then the upper half jittered so MPs do not retry in step.
func (p *Publisher) backoff(failures int, refresh time.Duration) time.Duration {
	limit := min(p.retryMax, refresh)
	d := p.retryBase
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + p.jitter(d-half)
}

// names returns the records in presentation form, for logs.
func (p *Publisher) names() []string {
	out := make([]string, len(p.records))
	for i, rr := range p.records {
		out[i] = strings.Join(strings.Fields(rr.String()), " ")
	}
	return out
}
