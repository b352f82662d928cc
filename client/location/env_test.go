package location

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/mp"
)

// testCA is a real site CA (smallstep's embedded authority over a SQLite site database).
type testCA struct {
	h    *ca.Hierarchy
	ca   *ca.CA
	db   *sitedb.DB
	site string
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
	return testCA{h: h, ca: c, db: db, site: site}
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

// newMP is a real management point of the site of c, over its database (both modes);
// serveMP puts a listener of it on 127.0.0.1.
func newMP(t *testing.T, c testCA) *mp.MP {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	v := &trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{c.h.Root}, []*x509.Certificate{c.h.Issuing}), Revoked: &trust.RevokedSet{}}
	m, err := mp.New(ctx, c.db, v, mp.Options{ID: "mp-test", Mode: mp.ModeBoth, DefaultPolicy: mp.DefaultPolicy(wire.Bootstrap{SiteCode: c.site, InternetMPs: []string{"mp.example.test:443"}, IntranetDNSSuffixes: []string{"corp.test"}, SRVNames: []string{DefaultSRVName}}), Log: zerolog.Nop()})
	if err != nil {
		t.Fatalf("mp.New: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatalf("starting the MP: %v", err)
	}
	t.Cleanup(func() { cancel(); m.Close() })
	return m
}

// mpServer is a TLS listener on 127.0.0.1.
type mpServer struct {
	addr string
	port uint16
}

func listen(t *testing.T) (net.Listener, *mpServer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l, &mpServer{addr: l.Addr().String(), port: uint16(l.Addr().(*net.TCPAddr).Port)}
}

// serveMP serves m's listener of location (wire.Intranet or wire.Internet) on 127.0.0.1,
// presenting cert, as site.Run does: the MP's own TLS configuration demands and checks
// the client certificate.
func serveMP(t *testing.T, m *mp.MP, cert tls.Certificate, location string) *mpServer {
	t.Helper()
	l, s := listen(t)
	cfg := m.TLSConfig(nil)
	cfg.Certificates = []tls.Certificate{cert}
	srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0)} // refused handshakes are what some tests want
	m.Configure(srv, location)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(tls.NewListener(l, cfg)) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return s
}

// startFakeMP is a TLS server presenting cert that, after the handshake, reads one HTTP
// request and lets answer write whatever it likes: a broken or hostile server holding a
// genuine MP certificate.
func startFakeMP(t *testing.T, cert tls.Certificate, answer func(c net.Conn, stop <-chan struct{})) *mpServer {
	t.Helper()
	l, s := listen(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(stop); _ = l.Close(); wg.Wait() })
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
				if _, err := http.ReadRequest(bufio.NewReader(tc)); err != nil {
					return
				}
				answer(tc, stop)
			})
		}
	})
	return s
}

// startDNS serves the given records on 127.0.0.1 over UDP with miekg/dns: a name it
// knows gets its records of the asked type (maybe none), any other name NXDOMAIN. It
// stands in for a resolver the device does not control, such as a hotel's.
func startDNS(t *testing.T, records ...string) string {
	t.Helper()
	return startOrderedDNS(t, nil, nil, records...)
}

// startOrderedDNS is startDNS whose answers wait until after is closed (nil: no wait),
// and which calls answered after each answer it sends (nil: none): two nameservers whose
// answers come in a known order.
func startOrderedDNS(t *testing.T, after <-chan struct{}, answered func(), records ...string) string {
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
		if after != nil {
			select {
			case <-after:
			case <-time.After(5 * time.Second): // the other nameserver was never asked
			}
		}
		_ = w.WriteMsg(m)
		if answered != nil {
			answered()
		}
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
