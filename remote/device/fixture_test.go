package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

func TestMain(m *testing.M) {
	// The test binary doubles as a consent client run under another uid.
	if v := os.Getenv("IBCM_TEST_ANSWER"); v != "" {
		sock, id, _ := strings.Cut(v, ";")
		code, err := Answer(context.Background(), sock, id, true)
		fmt.Printf("code=%s err=%v\n", code, err)
		os.Exit(0)
	}
	PasswdFile = filepath.Join(os.TempDir(), fmt.Sprintf("ibcm-device-passwd-%d", os.Getpid()))
	_ = os.WriteFile(PasswdFile, []byte("root:x:0:0:Rosa Root,,,:/root:/bin/sh\nnobody:x:65534:65534:Nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644)
	code := m.Run()
	os.Remove(PasswdFile)
	os.Exit(code)
}

const site, deviceID = "TST", "dev-1"

type pki struct {
	roots *x509.CertPool
	root  *x509.Certificate
	key   crypto.Signer
}

func newPKI(t *testing.T, cn string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &pki{roots: pool, root: root, key: key}
}

func (p *pki) leaf(t *testing.T, uri string, usage ...x509.ExtKeyUsage) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}, c
}

// reports records what the host tells the MP.
type reports struct {
	mu  sync.Mutex
	all []wire.SessionReport
	ch  chan wire.SessionReport
}

func (r *reports) report(_ context.Context, session string, rep wire.SessionReport) error {
	r.mu.Lock()
	r.all = append(r.all, rep)
	r.mu.Unlock()
	r.ch <- rep
	return nil
}

// wait returns the first report of event (reading the others on the way).
func (r *reports) wait(t *testing.T, event string) wire.SessionReport {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case rep := <-r.ch:
			if rep.Event == event {
				return rep
			}
		case <-timeout:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no %q report; got %+v", event, r.all)
		}
	}
}

// env is a host with a fake MP: a relay over a real loopback socket, a reporter and an
// uploader; the test plays the helper.
type env struct {
	t       *testing.T
	pki     *pki
	mp      tls.Certificate
	mpLeaf  *x509.Certificate
	dev     tls.Certificate
	alice   tls.Certificate
	host    *Host
	policy  Policy
	pmu     sync.Mutex
	rep     *reports
	relay   net.Listener
	dir     string
	sock    string
	audit   *bytes.Buffer
	amu     sync.Mutex
	notices chan string
	uploads chan []byte
	relayed chan string // ticket ids dialled
	cancel  context.CancelFunc
}

func newEnv(t *testing.T, rc wire.RemoteControlSettings) *env {
	t.Helper()
	p := newPKI(t, "root")
	e := &env{t: t, pki: p, rep: &reports{ch: make(chan wire.SessionReport, 100)}, audit: &bytes.Buffer{}, notices: make(chan string, 10),
		uploads: make(chan []byte, 4), relayed: make(chan string, 4)}
	e.mp, e.mpLeaf = p.leaf(t, "urn:ibcm:site:"+site+":role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	e.dev, _ = p.leaf(t, "urn:ibcm:device:"+deviceID, x509.ExtKeyUsageClientAuth)
	e.alice, _ = p.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	e.policy = Policy{RC: rc}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.relay = ln
	t.Cleanup(func() { ln.Close() })
	e.dir = t.TempDir()
	sockDir, err := os.MkdirTemp("", "ibcm-share-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(sockDir, 0o755)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.sock = filepath.Join(sockDir, "share.sock")
	h, err := New(Config{DeviceID: deviceID, SiteCode: site,
		Cert:   func() tls.Certificate { return e.dev },
		Roots:  func() *x509.CertPool { return p.roots },
		Policy: func() Policy { e.pmu.Lock(); defer e.pmu.Unlock(); return e.policy },
		Relay: func(ctx context.Context, session, tid string) (io.ReadWriteCloser, error) {
			e.relayed <- tid
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		},
		Report: e.rep.report,
		Upload: func(_ context.Context, _ string, b []byte) error { e.uploads <- b; return nil },
		Audit: func(sev, text string) {
			e.amu.Lock()
			fmt.Fprintf(e.audit, "%s %s\n", sev, text)
			e.amu.Unlock()
		},
		Notice:   func(s string) { e.notices <- s },
		StateDir: e.dir, Log: zerolog.New(zerolog.NewTestWriter(t)),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.host = h
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	sl, err := ListenShare(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() { h.Run(ctx); close(runDone) }()
	go h.ServeShare(ctx, sl)
	t.Cleanup(func() { cancel(); <-runDone })
	return e
}

func (e *env) auditText() string {
	e.amu.Lock()
	defer e.amu.Unlock()
	return e.audit.String()
}

func defaultRC() wire.RemoteControlSettings {
	return wire.RemoteControlSettings{Enabled: true, AccessLevel: "full", PromptUser: true, ConsentTimeout: "5s", AllowChat: true, ShowConnectionBar: true}
}

// ticketFor signs a ticket for alice's key.
func (e *env) ticketFor(mode string, modes ...string) (string, ticket.Ticket) {
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Card: ticket.Card{User: "alice", DisplayName: "Alice Helper", Title: "Help desk", Organization: "Corp"}, Role: ticket.RoleHelper,
		Mode: mode, Modes: modes, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	return e.sign(tk, e.mp), tk
}

func (e *env) sign(tk ticket.Ticket, signer tls.Certificate) string {
	s, err := ticket.Sign(tk, signer.PrivateKey.(crypto.Signer), []*x509.Certificate{signer.Leaf})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// helper is the test's helper end: the e2e TLS client over the fake relay.
type helper struct {
	t    *testing.T
	c    *tls.Conn
	r    *frame.Reader
	out  bytes.Buffer
	mu   sync.Mutex
	g    frame.Greeting
	msgs chan frame.Frame
}

// connect accepts the device's relay leg and runs the helper's side with cert.
func (e *env) connect(cert tls.Certificate) (*helper, error) {
	_ = e.relay.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
	c, err := e.relay.Accept()
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, e2e.HelperConfig(cert, e.pki.roots, deviceID, nil, nil))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	h := &helper{t: e.t, c: tc, r: frame.NewReader(tc), msgs: make(chan frame.Frame, 100)}
	f, err := h.r.Next()
	if err != nil || f.Type != frame.Hello {
		return nil, fmt.Errorf("hello: %v %v", f.Type, err)
	}
	if err := frame.DecodeJSON(f, &h.g); err != nil {
		return nil, err
	}
	if err := frame.WriteJSON(tc, frame.Hello, frame.Greeting{Rows: 24, Cols: 80}); err != nil {
		return nil, err
	}
	go func() {
		for {
			f, err := h.r.Next()
			if err != nil {
				close(h.msgs)
				return
			}
			if f.Type == frame.Data {
				h.mu.Lock()
				h.out.Write(f.Payload)
				h.mu.Unlock()
				continue
			}
			h.msgs <- frame.Frame{Type: f.Type, Payload: append([]byte(nil), f.Payload...)}
		}
	}()
	e.t.Cleanup(func() { tc.Close() })
	return h, nil
}

func (h *helper) output() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.out.String()
}

// waitOutput waits until the helper has seen want (a regular expression).
func (h *helper) waitOutput(want string) {
	h.t.Helper()
	re := regexp.MustCompile(want)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if re.MatchString(h.output()) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("the helper never saw %q; output: %q", want, h.output())
}

func (h *helper) send(t frame.Type, p []byte) {
	if err := frame.Write(h.c, t, p); err != nil {
		h.t.Fatal(err)
	}
}

func (h *helper) sendJSON(t frame.Type, v any) {
	if err := frame.WriteJSON(h.c, t, v); err != nil {
		h.t.Fatal(err)
	}
}

// next waits for a frame of type typ (other non-data frames are skipped).
func (h *helper) next(typ frame.Type) frame.Frame {
	h.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f, ok := <-h.msgs:
			if !ok {
				h.t.Fatalf("the session closed while waiting for %s", typ)
			}
			if f.Type == typ {
				return f
			}
		case <-timeout:
			h.t.Fatalf("no %s frame", typ)
		}
	}
}

func (h *helper) mode(m string) frame.ModeChange {
	h.t.Helper()
	h.sendJSON(frame.Mode, frame.ModeChange{Mode: m})
	var mc frame.ModeChange
	if err := frame.DecodeJSON(h.next(frame.Mode), &mc); err != nil {
		h.t.Fatal(err)
	}
	return mc
}

func newPKIForFuzz() *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuzz"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	c, _ := x509.ParseCertificate(der)
	return c
}

// watch runs a watcher (`ibcm-client consent --watch`) on the env's share socket until the
// test ends (or stop), once the agent has it: what the test writes to in is the local
// user's answers, out what the watcher prints.
func (e *env) watch(t *testing.T) (in *io.PipeWriter, out *syncBuffer, stop context.CancelFunc) {
	t.Helper()
	inR, inW := io.Pipe()
	out = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); inW.Close() })
	go Watch(ctx, e.sock, inR, out)
	waitText(t, out, "connected to the ibcm agent")
	return inW, out, cancel
}

// direct runs the helper's side of a direct connection on c (the preamble naming ticketID,
// then the end-to-end TLS as alice) and checks that the agent reports the session started
// on the direct transport. It returns the helper's TLS connection.
func (e *env) direct(t *testing.T, c net.Conn, ticketID string) *tls.Conn {
	t.Helper()
	_ = e2e.WritePreamble(c, ticketID)
	tc := tls.Client(c, e2e.HelperConfig(e.alice, e.pki.roots, deviceID, nil, nil))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	if st := e.rep.wait(t, wire.ReportStarted); st.Transport != wire.TransportDirect {
		t.Errorf("started %+v", st)
	}
	return tc
}
