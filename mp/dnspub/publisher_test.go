package dnspub

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/bindtest"
	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

const mpName = "_ibcm-mp._tcp.corp.test."

// config returns a Config that publishes to srv with its key.
func config(srv *bindtest.Server) Config {
	return Config{
		Server:    srv.Addr,
		Zone:      srv.Zone,
		KeyName:   srv.KeyName,
		Algorithm: srv.Algorithm,
		Secret:    srv.Secret,
		Timeout:   10 * time.Second, // generous: CI machines run many servers at once
	}
}

func newPublisher(t *testing.T, cfg Config, recs []Record) *Publisher {
	t.Helper()
	p, err := New(cfg, recs, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// waitDig polls the real dig until it shows want (in any order) for name's
// SRV records, failing t after within.
func waitDig(t *testing.T, srv *bindtest.Server, name string, within time.Duration, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(within)
	for {
		got := srv.Dig(t, "SRV", name)
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dig SRV %s = %q after %s, want %q", name, got, within, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPublishShowsInDig(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	cfg := config(srv)
	cfg.Zone = "corp.test" // the trailing dot is added
	p := newPublisher(t, cfg, Records("corp.test", "mp1.corp.test", 8443, "P01", true))

	// Twice, as after a restart: the records must not be duplicated.
	for range 2 {
		if err := p.Publish(ctxT(t)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	if got := srv.Dig(t, "SRV", mpName); !slices.Equal(got, []string{"0 0 8443 mp1.corp.test."}) {
		t.Errorf("dig SRV %s = %q, want [0 0 8443 mp1.corp.test.]", mpName, got)
	}
	cm := "_mssms_mp_p01._tcp.corp.test."
	if got := srv.Dig(t, "SRV", cm); !slices.Equal(got, []string{"0 0 8443 mp1.corp.test."}) {
		t.Errorf("dig SRV %s = %q, want [0 0 8443 mp1.corp.test.]", cm, got)
	}

	// The TTL is the default 5 minutes.
	q := new(dns.Msg)
	q.SetQuestion(mpName, dns.TypeSRV)
	r, err := dns.Exchange(q, srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 300 {
		t.Errorf("answer %v, want one SRV with TTL 300", r.Answer)
	}

	if err := p.Remove(ctxT(t)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	waitDig(t, srv, mpName, 0)
	waitDig(t, srv, cm, 0)
}

func TestPublishWithoutCMName(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	p := newPublisher(t, config(srv), Records("corp.test.", "mp1.corp.test.", 443, "P01", false))
	if err := p.Publish(ctxT(t)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitDig(t, srv, mpName, 0, "0 0 443 mp1.corp.test.")
	waitDig(t, srv, "_mssms_mp_p01._tcp.corp.test.", 0)
}

func TestPublishWithWrongKeyFails(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	otherSecret := make([]byte, 32)
	if _, err := rand.Read(otherSecret); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(*Config)
		want   []string // in the error message
	}{
		{"other secret", func(c *Config) { c.Secret = base64.StdEncoding.EncodeToString(otherSecret) }, []string{"NOTAUTH", "BADSIG"}},
		{"unknown key name", func(c *Config) { c.KeyName = "other-key." }, []string{"NOTAUTH", "BADKEY"}},
		{"other algorithm", func(c *Config) { c.Algorithm = "hmac-sha512" }, []string{"NOTAUTH", "BADKEY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config(srv)
			tt.modify(&cfg)
			p := newPublisher(t, cfg, Records(srv.Zone, "mp1.corp.test.", 8443, "", false))
			err := p.Publish(ctxT(t))
			if err == nil {
				t.Fatal("Publish with a wrong key succeeded")
			}
			t.Logf("Publish: %v", err)
			if !errors.Is(err, ErrTSIG) {
				t.Errorf("error %q is not ErrTSIG", err)
			}
			var uerr *UpdateError
			if !errors.As(err, &uerr) || uerr.Rcode != dns.RcodeNotAuth {
				t.Errorf("error %q is not an *UpdateError with NOTAUTH", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
			if strings.Contains(err.Error(), cfg.Secret) {
				t.Errorf("error %q contains the secret", err)
			}
			waitDig(t, srv, mpName, 0)
		})
	}
}

func TestPublishToWrongZoneFails(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	cfg := config(srv)
	cfg.Zone = "other.test."
	p := newPublisher(t, cfg, Records(cfg.Zone, "mp1.other.test.", 8443, "", false))
	err := p.Publish(ctxT(t))
	t.Logf("Publish: %v", err)
	var uerr *UpdateError
	if !errors.As(err, &uerr) || uerr.Rcode != dns.RcodeNotAuth || errors.Is(err, ErrTSIG) {
		t.Fatalf("Publish to a zone the server does not serve: %v, want NOTAUTH that is not ErrTSIG", err)
	}
	if !strings.Contains(err.Error(), "not authoritative") {
		t.Errorf("error %q does not say the server is not authoritative", err)
	}
}

func TestPublishToUnreachableServerFails(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	cfg := config(srv)
	cfg.Server = "127.0.0.1:1" // nothing listens there
	cfg.Timeout = time.Second
	p := newPublisher(t, cfg, Records(srv.Zone, "mp1.corp.test.", 8443, "", false))
	err := p.Publish(ctxT(t))
	if err == nil || errors.Is(err, ErrTSIG) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("Publish to a closed port: %v, want a sending error naming the server", err)
	}
}

func TestRunPublishesAndRemovesOnlyItsOwnRecords(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	var logs bytes.Buffer
	start := func(target string, log zerolog.Logger) (cancel func(), done <-chan error) {
		p, err := New(config(srv), Records(srv.Zone, target, 8443, "P01", true), log)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { errc <- p.Run(ctx) }()
		return cancel, errc
	}
	stop := func(cancel func(), done <-chan error) {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}

	cancel1, done1 := start("mp1.corp.test.", zerolog.New(&logs))
	cancel2, done2 := start("mp2.corp.test.", zerolog.New(zerolog.NewTestWriter(t)))
	defer cancel2()
	waitDig(t, srv, mpName, 5*time.Second, "0 0 8443 mp1.corp.test.", "0 0 8443 mp2.corp.test.")
	waitDig(t, srv, "_mssms_mp_p01._tcp.corp.test.", 0, "0 0 8443 mp1.corp.test.", "0 0 8443 mp2.corp.test.")

	// Run returns only after removal, so dig sees the result at once.
	stop(cancel1, done1)
	waitDig(t, srv, mpName, 0, "0 0 8443 mp2.corp.test.")
	waitDig(t, srv, "_mssms_mp_p01._tcp.corp.test.", 0, "0 0 8443 mp2.corp.test.")

	stop(cancel2, done2)
	waitDig(t, srv, mpName, 0)
	waitDig(t, srv, "_mssms_mp_p01._tcp.corp.test.", 0)

	for _, want := range []string{`"message":"published SRV records"`, `"message":"removed SRV records"`, `"dns_server":"` + srv.Addr} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
	if strings.Contains(logs.String(), srv.Secret) {
		t.Errorf("log contains the TSIG secret:\n%s", logs.String())
	}
}

func TestRunRestoresRecordsRemovedElsewhere(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	const ttl = 2 * time.Second
	cfg := config(srv)
	cfg.TTL = ttl
	p := newPublisher(t, cfg, Records(srv.Zone, "mp1.corp.test.", 8443, "", false))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitDig(t, srv, mpName, 5*time.Second, "0 0 8443 mp1.corp.test.")

	// Something else (scavenging, an admin) deletes the whole RRset with a
	// signed update from the real nsupdate.
	srv.NSUpdate(t, "update delete "+mpName+" SRV")
	if got := srv.Dig(t, "SRV", mpName); len(got) != 0 {
		t.Fatalf("dig SRV after out-of-band delete = %q, want nothing", got)
	}
	// Refreshed every TTL/2, so back within TTL; allow scheduling slack.
	waitDig(t, srv, mpName, ttl+time.Second, "0 0 8443 mp1.corp.test.")
}

func TestRunRetriesFailedPublishing(t *testing.T) {
	srv := bindtest.Start(t, "corp.test.")
	cfg := config(srv)
	cfg.Secret = base64.StdEncoding.EncodeToString(make([]byte, 32)) // wrong
	var logs bytes.Buffer
	p, err := New(cfg, Records(srv.Zone, "mp1.corp.test.", 8443, "", false), zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	p.retryBase = 20 * time.Millisecond
	p.jitter = func(time.Duration) time.Duration { return 0 }
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	// Removal at the end fails with the same wrong key, and Run says so.
	if err := p.Run(ctx); !errors.Is(err, ErrTSIG) {
		t.Errorf("Run with a wrong key returned %v, want ErrTSIG", err)
	}
	if n := strings.Count(logs.String(), "publishing SRV records failed"); n < 3 {
		t.Errorf("%d failed attempts logged in 300ms with 20ms backoff, want at least 3:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), cfg.Secret) {
		t.Errorf("log contains the TSIG secret")
	}
	waitDig(t, srv, mpName, 0)
}

func TestBackoff(t *testing.T) {
	p := &Publisher{
		retryBase: time.Second,
		retryMax:  time.Minute,
		jitter:    func(n time.Duration) time.Duration { return n - 1 }, // the largest jitter
	}
	tests := []struct {
		name     string
		failures int
		refresh  time.Duration
		min, max time.Duration
	}{
		{"first retry", 1, 150 * time.Second, 500 * time.Millisecond, time.Second},
		{"doubles", 3, 150 * time.Second, 2 * time.Second, 4 * time.Second},
		{"capped at retryMax", 30, 150 * time.Second, 30 * time.Second, time.Minute},
		{"capped at refresh", 30, 10 * time.Second, 5 * time.Second, 10 * time.Second},
		{"huge failure count does not overflow", 1 << 20, 150 * time.Second, 30 * time.Second, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, j := range []func(time.Duration) time.Duration{
				func(time.Duration) time.Duration { return 0 },
				func(n time.Duration) time.Duration { return n - 1 },
			} {
				p.jitter = j
				if d := p.backoff(tt.failures, tt.refresh); d < tt.min || d >= tt.max+1 {
					t.Errorf("backoff(%d, %s) = %s, want in [%s, %s]", tt.failures, tt.refresh, d, tt.min, tt.max)
				}
			}
		})
	}
}

func TestNewRejectsBadRecords(t *testing.T) {
	cfg := validConfig()
	tests := []struct {
		name string
		recs []Record
		want string
	}{
		{"none", nil, "no records"},
		{"outside the zone", []Record{{Name: "_ibcm-mp._tcp.other.example.", Target: "mp1.corp.example.", Port: 443}}, "not in zone"},
		{"no target", []Record{{Name: "_ibcm-mp._tcp.corp.example.", Port: 443}}, "target"},
		{"port 0", []Record{{Name: "_ibcm-mp._tcp.corp.example.", Target: "mp1.corp.example."}}, "port is 0"},
		{"bad owner", []Record{{Name: "a..corp.example.", Target: "mp1.corp.example.", Port: 443}}, "owner"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(cfg, tt.recs, zerolog.Nop())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := New(Config{}, Records("corp.example.", "mp1.corp.example.", 443, "", false), zerolog.Nop()); err == nil {
		t.Error("New accepted an empty Config")
	}
}
