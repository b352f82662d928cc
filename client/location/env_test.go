package location

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// testCA is a real site CA (smallstep's embedded authority over a SQLite site database).
type testCA struct {
	h  *ca.Hierarchy
	ca *ca.CA
}

// newHierarchy makes a site's root and issuing CA.
func newHierarchy(t *testing.T, site string) *ca.Hierarchy {
	t.Helper()
	h, err := ca.NewHierarchy(site, ca.P256, time.Now(), rand.Reader)
	if err != nil {
		t.Fatalf("ca.NewHierarchy: %v", err)
	}
	return h
}

// newCA opens a CA for site over hierarchy h.
func newCA(t *testing.T, h *ca.Hierarchy, site string) testCA {
	t.Helper()
	ctx := context.Background()
	db, err := sitedb.Open(ctx, sitedb.SQLite, filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatalf("opening the site database: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	c, err := ca.New(ctx, db, ca.Options{SiteCode: site, Hierarchy: h, PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop()})
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	return testCA{h: h, ca: c}
}

// issue has the CA issue a certificate for a new key and returns it with its chain.
func (c testCA) issue(t *testing.T, spec ca.IssueSpec) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: spec.Subject}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.ca.Issue(context.Background(), spec, csr, "admin:test")
	if err != nil {
		t.Fatalf("issuing %s %s: %v", spec.Profile, spec.Subject, err)
	}
	return tls.Certificate{Certificate: [][]byte{chain[0].Raw, c.h.Issuing.Raw}, PrivateKey: key, Leaf: chain[0]}
}

// mpServer is a TLS listener on 127.0.0.1 that, like an MP, demands a client certificate.
// It completes handshakes and hangs up; it remembers the client certificates it saw.
type mpServer struct {
	addr string
	port uint16

	mu    sync.Mutex
	peers []string // common names of the client certificates presented
}

func startMP(t *testing.T, cert tls.Certificate) *mpServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &mpServer{addr: l.Addr().String(), port: uint16(l.Addr().(*net.TCPAddr).Port)}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					return
				}
				if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
					s.mu.Lock()
					s.peers = append(s.peers, pc[0].Subject.CommonName)
					s.mu.Unlock()
				}
			})
		}
	})
	return s
}

// sawClient tells whether a client presented a certificate for cn, waiting a little for
// handshakes the server is still finishing (in TLS 1.3 the client is done first).
func (s *mpServer) sawClient(cn string) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		saw := slices.Contains(s.peers, cn)
		s.mu.Unlock()
		if saw {
			return true
		}
	}
	return false
}

// startDNS serves the given records on 127.0.0.1 over UDP with miekg/dns: a name it
// knows gets its records of the asked type (maybe none), any other name NXDOMAIN. It
// stands in for a resolver the device does not control, such as a hotel's.
func startDNS(t *testing.T, records ...string) string {
	t.Helper()
	zone := map[string][]dns.RR{}
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("record %q: %v", s, err)
		}
		name := dns.CanonicalName(rr.Header().Name)
		zone[name] = append(zone[name], rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		rrs, known := zone[dns.CanonicalName(q.Question[0].Name)]
		if !known {
			m.Rcode = dns.RcodeNameError
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Question[0].Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		_ = w.WriteMsg(m)
	})
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: handler, NotifyStartedFunc: func() { close(started) }}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	return pc.LocalAddr().String()
}

// startBlackHole is a UDP socket on 127.0.0.1 that reads every query and never answers.
func startBlackHole(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			if _, _, err := pc.ReadFrom(buf); errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
	return pc.LocalAddr().String()
}

// writeResolvConf writes a resolv.conf naming the given nameservers (IP:PORT).
func writeResolvConf(t *testing.T, nameservers ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# written by the test\nsearch corp.test\noptions timeout:1\n")
	for _, ns := range nameservers {
		b.WriteString("nameserver " + ns + "\n")
	}
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func portOf(s *mpServer) string { return strconv.Itoa(int(s.port)) }

// stepsOf returns the evidence steps of one kind.
func stepsOf(d Decision, kind string) []Step {
	var out []Step
	for _, s := range d.Evidence {
		if s.Kind == kind {
			out = append(out, s)
		}
	}
	return out
}

// findStep returns the first step of kind whose target starts with target.
func findStep(t *testing.T, d Decision, kind, target string) Step {
	t.Helper()
	for _, s := range d.Evidence {
		if s.Kind == kind && strings.HasPrefix(s.Target, target) {
			return s
		}
	}
	t.Fatalf("no %s step for %q in the evidence:\n%s", kind, target, describe(d))
	return Step{}
}

// describe prints a decision for a test log.
func describe(d Decision) string {
	var b strings.Builder
	b.WriteString(d.Location + " " + d.MP + " (" + d.Took.String() + "): " + d.Reason + "\n")
	for _, s := range d.Evidence {
		b.WriteString("  " + s.Kind + " " + s.Target + " [" + s.Took.String() + "] ")
		if s.Error != "" {
			b.WriteString("ERROR " + s.Error)
		} else {
			b.WriteString(s.Result)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// startBlackHoleTCP is a TCP listener on 127.0.0.1 that accepts and never says a word.
func startBlackHoleTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// closedPort returns a TCP port on 127.0.0.1 nothing listens on (it did a moment ago).
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	_ = l.Close()
	return port
}
