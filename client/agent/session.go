package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// errMPDown is a failure to reach the MP at all (as opposed to an answer it gave).
var errMPDown = errors.New("management point unreachable")

// sessionLoop keeps one session with the current MP, and starts a new one when the MP or
// the certificate changes.
func (a *Agent) sessionLoop(ctx context.Context) {
	stop := func() {}
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.restart:
		}
		stop()
		wg.Wait()
		a.mu.Lock()
		cur, id := a.current, a.id
		a.mu.Unlock()
		if cur.MP == "" {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		stop = cancel
		s := &session{a: a, base: strings.TrimSuffix(cur.MP, "/"), location: cur.Location, http: mpClient(id, cur.Addr, a.remote.crl.Revoked)}
		wg.Add(1)
		go func() { defer wg.Done(); s.run(sctx) }()
	}
}

// mpClient talks to the MP over mutual TLS, presenting only the leaf certificate (the MP
// knows the issuing CA). It dials addr, the address detection proved, so no name is looked
// up outside the agent's own resolvers; TLS still verifies the MP's name, and refuses an
// MP certificate that revoked (the agent's verified CRL; nil checks nothing) lists.
func mpClient(id *client.Identity, addr string, revoked func(*x509.Certificate) bool) *http.Client {
	leafOnly := id.Certificate
	leafOnly.Certificate = leafOnly.Certificate[:1]
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{leafOnly}, RootCAs: id.Roots, MinVersion: tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if revoked == nil {
					return nil
				}
				for _, c := range cs.PeerCertificates {
					if revoked(c) {
						return fmt.Errorf("the MP's certificate %s is revoked (CRL)", wire.FormatSerial(c.SerialNumber))
					}
				}
				return nil
			}},
		DialContext: func(ctx context.Context, network, hostport string) (net.Conn, error) {
			if addr != "" {
				hostport = addr
			}
			return dialer.DialContext(ctx, network, hostport)
		},
		MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 5 * time.Second,
	}}
}

// session is the agent's conversation with one MP.
type session struct {
	a        *Agent
	base     string
	location string
	http     *http.Client
	failures int // consecutive failures to reach the MP
	mu       sync.Mutex
}

func (s *session) run(ctx context.Context) {
	// A session ends when the MP or the certificate changes: its kept-alive connections go
	// with it (their handshake presented the certificate; after a renewal the MP refuses it
	// as superseded once the new one has been presented).
	defer s.http.CloseIdleConnections()
	log := s.a.log.With().Str("mp", s.base).Str("location", s.location).Logger()
	b := backoff{base: time.Second, max: 5 * time.Minute}
	for { // hello and the first policy, until they work
		err := s.hello(ctx)
		if err == nil {
			err = s.fetchPolicy(ctx)
		}
		if err == nil {
			break
		}
		s.failed(err)
		log.Warn().Err(err).Msg("MP not ready")
		select {
		case <-ctx.Done():
			return
		case <-time.After(b.next()):
		}
	}
	s.a.setMP(s, true)
	defer s.a.setMP(s, false)
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context){s.checkinLoop, s.spoolLoop, s.notifyLoop} {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	wg.Wait()
}

// failed counts a failure; three failures to reach the MP in a row make the agent detect
// its location again, with the current MP marked failed.
func (s *session) failed(err error) {
	s.a.setError(err)
	if !errors.Is(err, errMPDown) {
		return
	}
	s.mu.Lock()
	s.failures++
	n := s.failures
	s.mu.Unlock()
	if n%3 == 0 {
		s.a.Redetect(true)
	}
}

func (s *session) ok() {
	s.mu.Lock()
	s.failures = 0
	s.mu.Unlock()
	s.a.setError(nil)
}

// do sends a JSON request to the MP. A transport failure wraps errMPDown; an answer with an
// error status is a *client.ServerError.
func (s *session) do(ctx context.Context, method, path string, in any, hdr http.Header, out any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMPDown, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMPDown, err)
	}
	if resp.StatusCode == http.StatusNotModified {
		return resp, nil
	}
	if resp.StatusCode >= 300 {
		var e wire.Error
		_ = json.Unmarshal(data, &e)
		err := &client.ServerError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message, Server: client.ManagementPoint}
		if resp.StatusCode == http.StatusServiceUnavailable {
			return resp, fmt.Errorf("%w: %v", errMPDown, err)
		}
		if e.Error.Code == "certificate_superseded" {
			s.a.contestSuperseded()
		}
		return resp, err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	s.ok()
	return resp, nil
}

func (s *session) hello(ctx context.Context) error {
	s.a.mu.Lock()
	id := s.a.id
	s.a.mu.Unlock()
	h := wire.Hello{Name: id.Name, FQDN: id.FQDN, OS: osName(), AgentVersion: Version, HardwareID: hardwareID(), Addresses: s.a.addresses()}
	var resp wire.HelloResponse
	if _, err := s.do(ctx, http.MethodPost, "/v1/hello", h, nil, &resp); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	for _, w := range resp.Warnings {
		s.a.log.Warn().Str("warning", w).Msg("the MP flags this device")
	}
	return nil
}

// fetchPolicy gets the device's policy, conditional on the cached ETag, and caches it.
func (s *session) fetchPolicy(ctx context.Context) error {
	s.a.mu.Lock()
	hdr := http.Header{}
	if s.a.policy != nil {
		hdr.Set("If-None-Match", s.a.policy.ETag)
	}
	s.a.mu.Unlock()
	var p wire.Policy
	resp, err := s.do(ctx, http.MethodGet, "/v1/policy", nil, hdr, &p)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if resp.StatusCode == http.StatusNotModified {
		return nil
	}
	cp := cachedPolicy{Policy: p, ETag: resp.Header.Get("ETag")}
	b, _ := json.Marshal(cp)
	if err := atomicfile.Write(filepath.Join(s.a.o.Dir, PolicyFile), b, 0o600); err != nil {
		s.a.log.Warn().Err(err).Msg("caching the policy")
	}
	s.a.mu.Lock()
	old := s.a.policy
	s.a.policy = &cp
	s.a.mu.Unlock()
	s.a.deploy.m.SetPolicy(p.Deployments) // act on the deployments at once
	if old == nil || old.Policy.Location.RedetectInterval != p.Location.RedetectInterval ||
		fmt.Sprint(old.Policy.Location) != fmt.Sprint(p.Location) {
		s.a.Redetect(false) // the location settings changed
	}
	s.a.log.Info().Str("policy", p.Name).Int("version", p.Version).Msg("policy")
	return nil
}

func (s *session) checkinInterval() time.Duration {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	if s.a.policy != nil {
		if d, err := time.ParseDuration(s.a.policy.Policy.Client.CheckinInterval); err == nil && d > 0 {
			return d
		}
	}
	return 15 * time.Minute
}

// checkinLoop checks in at once and then on the policy's interval with jitter; failures
// retry with backoff.
func (s *session) checkinLoop(ctx context.Context) {
	b := backoff{base: 2 * time.Second, max: 5 * time.Minute}
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		var resp wire.CheckinResponse
		_, err := s.do(ctx, http.MethodPost, "/v1/checkin", wire.Checkin{Location: s.location, Addresses: s.a.addresses(), AgentVersion: Version, Compliance: "unknown"}, nil, &resp)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.failed(fmt.Errorf("check-in: %w", err))
			wait = b.next()
			continue
		}
		b.reset()
		now := time.Now().UTC()
		s.a.mu.Lock()
		s.a.status.LastCheckin = &now
		stale := s.a.policy == nil || s.a.policy.ETag != resp.PolicyETag
		s.a.mu.Unlock()
		if stale {
			if err := s.fetchPolicy(ctx); err != nil {
				s.failed(err)
			}
		}
		signal(s.a.kick)
		wait = jitter(s.checkinInterval(), 0.1)
	}
}

// spoolLoop sends spooled status messages in batches whenever there are some, and removes
// exactly those the MP acknowledges.
func (s *session) spoolLoop(ctx context.Context) {
	b := backoff{base: 2 * time.Second, max: 5 * time.Minute}
	for {
		msgs, err := s.a.spool.Peek(100)
		if err != nil {
			s.a.log.Error().Err(err).Msg("reading the spool")
		}
		if len(msgs) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.a.kick:
			case <-time.After(30 * time.Second):
			}
			continue
		}
		var ack wire.StatusAck
		_, err = s.do(ctx, http.MethodPost, "/v1/status", wire.StatusBatch{Messages: msgs}, nil, &ack)
		var se *client.ServerError
		if errors.As(err, &se) && se.Status == http.StatusBadRequest {
			// The MP refuses the batch: find the messages it refuses, one by one, and drop
			// them, so one bad message cannot hold up all the others for ever.
			ack, err = s.sendEach(ctx, msgs)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failed(fmt.Errorf("status: %w", err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(b.next()):
			}
			continue
		}
		b.reset()
		if err := s.a.spool.Ack(ack.Acked); err != nil {
			s.a.log.Error().Err(err).Msg("removing acknowledged messages")
		}
	}
}

// sendEach sends messages one at a time; those the MP refuses with 400 are dropped (and
// logged), the others acknowledged as usual.
func (s *session) sendEach(ctx context.Context, msgs []wire.StatusMessage) (wire.StatusAck, error) {
	var all wire.StatusAck
	for _, m := range msgs {
		var ack wire.StatusAck
		_, err := s.do(ctx, http.MethodPost, "/v1/status", wire.StatusBatch{Messages: []wire.StatusMessage{m}}, nil, &ack)
		var se *client.ServerError
		switch {
		case errors.As(err, &se) && se.Status == http.StatusBadRequest:
			s.a.log.Error().Str("message_id", m.ID).Err(err).Msg("the MP refuses a status message: dropped")
			all.Acked = append(all.Acked, m.ID)
		case err != nil:
			return all, err
		default:
			all.Acked = append(all.Acked, ack.Acked...)
		}
	}
	return all, nil
}

// notifyLoop keeps the notification channel open (reconnecting with backoff) and acts on
// its events.
func (s *session) notifyLoop(ctx context.Context) {
	rc := NewReconnect()
	url := "wss" + strings.TrimPrefix(s.base, "https") + "/v1/notify"
	for {
		ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: s.http})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.failed(fmt.Errorf("%w: notification channel: %v", errMPDown, err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(rc.Wait(resp)): // a 503's Retry-After is honoured
			}
			continue
		}
		rc.Connected()
		s.setNotify(true)
		// Events may have been missed while disconnected: catch up.
		if err := s.fetchPolicy(ctx); err != nil {
			s.failed(err)
		}
		for {
			_, data, err := ws.Read(ctx)
			if err != nil {
				break
			}
			var ev wire.Event
			if json.Unmarshal(data, &ev) != nil {
				continue
			}
			s.a.log.Info().Str("type", ev.Type).Msg("event")
			switch ev.Type {
			case wire.EventPolicyChanged:
				if err := s.fetchPolicy(ctx); err != nil {
					s.failed(err)
				}
			case wire.EventRenewCert:
				signal(s.a.renew)
			case wire.EventRedetectLocation:
				s.a.Redetect(false)
			case wire.EventSessionRequested, wire.EventSessionEnded:
				s.a.onSessionEvent(ev)
			}
		}
		ws.CloseNow()
		s.setNotify(false)
		if ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(rc.Wait(nil)):
		}
	}
}

func (s *session) setNotify(up bool) {
	s.a.mu.Lock()
	s.a.status.Notify = up
	s.a.mu.Unlock()
}

// Facts the agent tells the MP about the device.

func osName() string {
	f, err := os.Open("/etc/os-release")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
				return strings.Trim(v, `"`)
			}
		}
	}
	return runtime.GOOS
}

func hardwareID() string {
	b, err := os.ReadFile("/etc/machine-id")
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if len(id) > 64 {
		id = id[:64]
	}
	return id
}

// addresses are the addresses the agent reports and where its session port listens:
// Options.DirectAddrs when given, else every address of the machine's interfaces but
// loopback and link-local ones (at most 16).
func (a *Agent) addresses() []string {
	if len(a.o.DirectAddrs) > 0 {
		out := make([]string, 0, len(a.o.DirectAddrs))
		for _, ip := range a.o.DirectAddrs {
			out = append(out, ip.String())
		}
		return out
	}
	return interfaceAddresses()
}

func interfaceAddresses() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
			out = append(out, ipn.IP.String())
		}
		if len(out) == 16 {
			break
		}
	}
	return out
}
