package helper

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
)

// pki is a site in miniature: a root, the MP's server certificate, alice's user
// certificate and two devices'.
type pki struct {
	root    *x509.Certificate
	key     crypto.Signer
	roots   *x509.CertPool
	mp      tls.Certificate
	alice   tls.Certificate
	devices map[string]tls.Certificate
	revoked []*big.Int // serials the fake MP's CRL lists
	// crlAnswer, when set, answers GET /v1/crl instead of the root's list.
	crlAnswer func(http.ResponseWriter)
}

// crl is the list the fake MP serves: signed by the root, which issues every leaf here.
func (p *pki) crl(t *testing.T) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, sn := range p.revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Minute),
		NextUpdate: time.Now().Add(time.Hour), RevokedCertificateEntries: entries}, p.root, p.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	p := &pki{root: root, key: key, roots: x509.NewCertPool(), devices: map[string]tls.Certificate{}}
	p.roots.AddCert(root)
	p.mp = p.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	p.alice = p.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	for _, d := range []string{"dev-1", "dev-2"} {
		p.devices[d] = p.leaf(t, "urn:ibcm:device:"+d, x509.ExtKeyUsageClientAuth)
	}
	return p
}

func (p *pki) leaf(t *testing.T, uri string, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "leaf"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// device is a fake agent: the e2e TLS server with a device certificate, then frames.
type device struct {
	t    *testing.T
	p    *pki
	cert tls.Certificate // the certificate it presents
	// tookOther: after the end-to-end TLS the device closes the leg, as a device does with
	// the leg it did not take.
	tookOther bool
	mu        sync.Mutex
	legs      []string // the transport of each leg it served
}

func (d *device) serve(raw net.Conn, transport string) {
	defer raw.Close()
	d.mu.Lock()
	d.legs = append(d.legs, transport)
	d.mu.Unlock()
	conn := tls.Server(raw, e2e.DeviceConfig(d.cert, e2e.HelperExpect{Roots: d.p.roots, User: "alice", KeyHash: wire.PublicKeyHash(d.p.alice.Leaf)}))
	if err := conn.Handshake(); err != nil || d.tookOther {
		conn.Close()
		return
	}
	r := frame.NewReader(conn)
	f, err := r.Next()
	if err != nil || f.Type != frame.Hello {
		return
	}
	var hello frame.Greeting
	if frame.DecodeJSON(f, &hello) != nil {
		return
	}
	_ = frame.WriteJSON(conn, frame.Hello, frame.Greeting{Session: "s", Mode: "view", Sharer: "bob", SharerName: "Bob Dupont", Terminal: "shared"})
	_ = frame.WriteJSON(conn, frame.Status, frame.Presence{Message: fmt.Sprintf("helper terminal %dx%d over %s", hello.Rows, hello.Cols, transport)})
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		switch f.Type {
		case frame.Data:
			_ = frame.Write(conn, frame.Data, f.Payload)
		case frame.Chat:
			_ = frame.Write(conn, frame.Chat, f.Payload)
		case frame.Resize:
			rows, cols, _ := frame.ParseResize(f.Payload)
			_ = frame.WriteJSON(conn, frame.Status, frame.Presence{Message: fmt.Sprintf("resize %dx%d", rows, cols)})
			_ = frame.Write(conn, frame.Resize, frame.ResizePayload(rows/2, cols/2)) // the sharer's window
		case frame.Mode:
			var m frame.ModeChange
			_ = frame.DecodeJSON(f, &m)
			if m.Mode == "elevated" {
				_ = frame.WriteJSON(conn, frame.Mode, frame.ModeChange{Mode: m.Mode, Reason: "denied"})
			} else {
				_ = frame.WriteJSON(conn, frame.Mode, frame.ModeChange{Mode: m.Mode, Granted: true})
			}
		case frame.Ping:
			_ = frame.Write(conn, frame.Pong, nil)
		case frame.End:
			_ = frame.WriteJSON(conn, frame.End, frame.Ending{Outcome: wire.OutcomeCompleted})
			return
		}
	}
}

// fakeMP answers the session routes: a canned start, and the relay leg either refused
// with relayError or spliced to the fake device after relayDelay.
type fakeMP struct {
	srv        *httptest.Server
	dev        *device
	start      wire.SessionStart
	relayError *wire.Error
	relayCode  int
	relayDelay time.Duration
	relays     chan string // one per relay leg asked for: its direct= (why direct lost)
}

const sessionID, ticketID = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"

func newFakeMP(t *testing.T, p *pki, dev *device) *fakeMP {
	t.Helper()
	m := &fakeMP{dev: dev, relays: make(chan string, 16), start: wire.SessionStart{
		Session:  wire.Session{ID: sessionID, Device: "dev-1", DeviceName: "kiosk-1", State: wire.SessionRequested, Mode: "view"},
		TicketID: ticketID, Role: "helper", Modes: []string{"view", "control"}, Device: wire.DeviceCard{ID: "dev-1", Name: "kiosk-1"},
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/crl", func(w http.ResponseWriter, r *http.Request) {
		if p.crlAnswer != nil {
			p.crlAnswer(w)
			return
		}
		_, _ = w.Write(p.crl(t))
	})
	mux.HandleFunc("POST /v1/admin/sessions", func(w http.ResponseWriter, r *http.Request) {
		var req wire.SessionStartRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Device == "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(m.start)
	})
	mux.HandleFunc("GET /v1/admin/sessions/{id}/relay", func(w http.ResponseWriter, r *http.Request) {
		m.relays <- r.URL.Query().Get("direct")
		if r.PathValue("id") != sessionID || r.URL.Query().Get("ticket") != ticketID || r.Header.Get("Upgrade") != wire.RelayProtocol ||
			len(r.TLS.PeerCertificates) == 0 || wire.Identify(r.TLS.PeerCertificates[0]).ID != "alice" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if m.relayError != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(m.relayCode)
			_ = json.NewEncoder(w).Encode(m.relayError)
			return
		}
		select {
		case <-time.After(m.relayDelay):
		case <-r.Context().Done():
			return
		}
		hj, _ := w.(http.Hijacker)
		conn, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ibcm-relay\r\n\r\n")
		_ = brw.Flush()
		// Splice the helper's leg to the device's.
		helperEnd, deviceEnd := net.Pipe()
		go m.dev.serve(deviceEnd, wire.TransportRelay)
		go func() { _, _ = io.Copy(helperEnd, brw); helperEnd.Close() }()
		_, _ = io.Copy(conn, helperEnd)
	})
	m.srv = httptest.NewUnstartedServer(mux)
	m.srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.mp}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.roots}
	m.srv.StartTLS()
	t.Cleanup(m.srv.Close)
	return m
}

func (m *fakeMP) client(t *testing.T, p *pki) *Client {
	t.Helper()
	c, err := NewClient(m.srv.URL, &tls.Config{Certificates: []tls.Certificate{p.alice}, RootCAs: p.roots}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.DirectTimeout = 300 * time.Millisecond
	return c
}

// directListener is the device's session port: the preamble, then the device.
func directListener(t *testing.T, dev *device) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveDirect(t, ln, dev)
	return ln.Addr().String()
}

// serveDirect serves the device's session port on ln.
func serveDirect(t *testing.T, ln net.Listener, dev *device) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				id, err := e2e.ReadPreamble(c)
				_ = c.SetReadDeadline(time.Time{})
				if err != nil || id != ticketID {
					c.Close()
					return
				}
				dev.serve(c, wire.TransportDirect)
			}()
		}
	}()
}

// silentListener accepts and never answers.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().String()
}

// closedPort is a loopback port nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// open starts a session through the fake MP and connects.
func open(t *testing.T, m *fakeMP, c *Client) (*Connection, *Session) {
	t.Helper()
	ctx := ctxT(t)
	start, err := c.Start(ctx, wire.SessionStartRequest{Device: "kiosk", Mode: "view"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Connect(ctx, start, frame.Greeting{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if s.Connection == nil || s.Connection.TLS == nil || s.Connection.TLS.ConnectionState().NegotiatedProtocol != e2e.ALPN {
		t.Fatalf("connection %+v", s.Connection)
	}
	return s.Connection, s
}

// next reads events until one of type want.
func next(t *testing.T, s *Session, want frame.Type) Event {
	t.Helper()
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		ev, err := s.Next()
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if ev.Type == want {
			if ev.Data != nil {
				ev.Data = append([]byte(nil), ev.Data...)
			}
			return ev
		}
	}
}

func TestRelay(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	conn, s := open(t, m, m.client(t, p))
	if conn.Transport != wire.TransportRelay || len(conn.Others) != 0 {
		t.Fatalf("transport %s, others %+v", conn.Transport, conn.Others)
	}
	if s.Device.Sharer != "bob" || s.Device.SharerName != "Bob Dupont" || s.Device.Terminal != "shared" {
		t.Errorf("device greeting %+v", s.Device)
	}
	if ev := next(t, s, frame.Status); ev.Presence.Message != "helper terminal 24x80 over relay" {
		t.Errorf("the device saw %q", ev.Presence.Message)
	}
	if _, err := s.Write([]byte("echo hi\r")); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s, frame.Data); string(ev.Data) != "echo hi\r" {
		t.Errorf("data %q", ev.Data)
	}
	if err := s.Resize(40, 120); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s, frame.Status); ev.Presence.Message != "resize 40x120" {
		t.Errorf("resize: %q", ev.Presence.Message)
	}
	if ev := next(t, s, frame.Resize); ev.Rows != 20 || ev.Cols != 60 {
		t.Errorf("the shared terminal's size: %dx%d", ev.Rows, ev.Cols)
	}
	if err := s.Ping(); err != nil {
		t.Fatal(err)
	}
	next(t, s, frame.Pong)
	if err := s.End("done"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s, frame.End); ev.Ending.Outcome != wire.OutcomeCompleted {
		t.Errorf("ending %+v", ev.Ending)
	}
	if _, err := s.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the end: %v, want EOF", err)
	}
}

func TestChatKeepsEveryScript(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	_, s := open(t, m, m.client(t, p))
	for _, text := range []string{"你好，我来帮你看看这台电脑", "مرحبا، سأساعدك في حل المشكلة", "mixed: é ß 🙂 你好 مرحبا"} {
		if err := s.Chat(text); err != nil {
			t.Fatal(err)
		}
		if ev := next(t, s, frame.Chat); ev.Text != text {
			t.Errorf("chat came back as %q, want %q", ev.Text, text)
		}
	}
	for _, bad := range []string{"", string([]byte{0xff, 0xfe}), strings.Repeat("你", frame.MaxChat/3+1)} {
		if err := s.Chat(bad); !errors.Is(err, ErrChat) {
			t.Errorf("chat %.20q: %v, want ErrChat", bad, err)
		}
	}
}

func TestModeRequests(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	_, s := open(t, m, m.client(t, p))
	if err := s.RequestMode("control"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s, frame.Mode); ev.Mode.Mode != "control" || !ev.Mode.Granted {
		t.Errorf("control: %+v", ev.Mode)
	}
	if err := s.RequestMode("elevated"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s, frame.Mode); ev.Mode.Mode != "elevated" || ev.Mode.Granted || ev.Mode.Reason != "denied" {
		t.Errorf("elevated: %+v", ev.Mode)
	}
	if err := s.RequestMode("root"); err == nil {
		t.Error("an unknown mode was sent")
	}
}

func TestDirectWinsWhenReachable(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	m.start.Direct = []string{directListener(t, dev)}
	m.start.RelayAfterMS = 2000
	conn, s := open(t, m, m.client(t, p))
	if conn.Transport != wire.TransportDirect {
		t.Fatalf("transport %s (others: %s)", conn.Transport, conn.Lost())
	}
	if len(m.relays) != 0 {
		t.Error("the relay was asked for although the direct connection came first")
	}
	if ev := next(t, s, frame.Status); ev.Presence.Message != "helper terminal 24x80 over direct" {
		t.Errorf("the device saw %q", ev.Presence.Message)
	}
	if err := s.Chat("direct"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, s, frame.Chat); ev.Text != "direct" {
		t.Errorf("chat %q", ev.Text)
	}
}

// TestDirectWinsWhenOpenedLate: the device opens its session port only once the session
// is accepted, so the helper's first try is refused; that does not start the relay before
// RelayAfterMS, and the next try reaches the device directly.
func TestDirectWinsWhenOpenedLate(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	addr := closedPort(t)
	m.start.Direct = []string{addr}
	m.start.RelayAfterMS = 2000
	c := m.client(t, p)
	var once sync.Once
	var refused bool
	c.DirectDialer = func(ctx context.Context, network, a string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, a)
		once.Do(func() { // the first try: then the device opens its port
			refused = errors.Is(err, syscall.ECONNREFUSED)
			ln, lerr := net.Listen("tcp", addr)
			if lerr != nil {
				t.Errorf("opening the session port late: %v", lerr)
				return
			}
			serveDirect(t, ln, dev)
		})
		return conn, err
	}
	conn, _ := open(t, m, c)
	if !refused {
		t.Fatal("the first try was not refused")
	}
	if conn.Transport != wire.TransportDirect {
		t.Fatalf("transport %s (others: %s), want direct", conn.Transport, conn.Lost())
	}
	if len(m.relays) != 0 {
		t.Error("a refused first try started the relay before relay_after_ms")
	}
}

// TestFallbackToRelay: a closed session port and one that never answers both lose to the
// relay, and the reason says which.
func TestFallbackToRelay(t *testing.T) {
	cases := []struct {
		name   string
		addr   func(t *testing.T) string
		delay  time.Duration // before the relay answers
		kinds  []string
		reason string
		direct string // what the relay leg tells the MP
	}{
		{"closed port", closedPort, 0, []string{"closed"}, "connection refused", wire.DirectClosed},
		{"listener that never answers, relay first", silentListener, 0, []string{"no-answer"}, "TLS handshake had no answer", wire.DirectTimeout},
		{"listener that never answers, timed out", silentListener, 800 * time.Millisecond, []string{"timeout", "no-answer"}, "TLS handshake", wire.DirectTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPKI(t)
			dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
			m := newFakeMP(t, p, dev)
			m.start.Direct = []string{tc.addr(t)}
			m.start.RelayAfterMS = 50
			m.relayDelay = tc.delay
			conn, s := open(t, m, m.client(t, p))
			if conn.Transport != wire.TransportRelay || len(conn.Others) != 1 {
				t.Fatalf("transport %s, others %+v", conn.Transport, conn.Others)
			}
			a := conn.Others[0]
			ok := false
			for _, k := range tc.kinds {
				ok = ok || a.Kind == k
			}
			if a.Transport != wire.TransportDirect || !ok || !strings.Contains(a.Reason, tc.reason) || !strings.Contains(conn.Lost(), a.Addr) {
				t.Errorf("the direct attempt: %+v (lost: %s), want kind %v and %q", a, conn.Lost(), tc.kinds, tc.reason)
			}
			if got := <-m.relays; got != tc.direct {
				t.Errorf("the relay leg said direct=%q, want %q", got, tc.direct)
			}
			if tc.delay > 0 && a.Kind == "timeout" && !strings.Contains(a.Reason, "within 300ms") {
				t.Errorf("a timed-out try does not say its limit: %s", a.Reason)
			}
			if err := s.Chat("via relay"); err != nil {
				t.Fatal(err)
			}
			next(t, s, frame.Chat)
		})
	}
}

// TestOtherDeviceRefused: a device presenting another device's certificate is refused,
// on the relay and on the session port.
func TestOtherDeviceRefused(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-2"]}
	m := newFakeMP(t, p, dev)
	c := m.client(t, p)
	_, err := c.Connect(ctxT(t), m.start, frame.Greeting{})
	if !errors.Is(err, ErrPeer) || Code(err) != "e2e_peer" || !strings.Contains(err.Error(), `"dev-2"`) {
		t.Fatalf("relay to the wrong device: %v", err)
	}

	// On the session port the impostor loses to the relay, which reaches the right device.
	right := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m2 := newFakeMP(t, p, right)
	m2.start.Direct = []string{directListener(t, dev)}
	m2.start.RelayAfterMS = 1000
	s, err := m2.client(t, p).Connect(ctxT(t), m2.start, frame.Greeting{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn := s.Connection
	if conn.Transport != wire.TransportRelay || len(conn.Others) != 1 || conn.Others[0].Kind != "peer" || !errors.Is(conn.Others[0].Err, ErrPeer) {
		t.Errorf("transport %s, others %+v", conn.Transport, conn.Others)
	}
}

// A device certificate on the site's CRL is refused on the session port (nobody else checks
// it there); the relay, whose MP checks it in its handshake, is what remains.
func TestRevokedDeviceRefusedOnTheSessionPort(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	m.start.Direct = []string{directListener(t, dev)}
	m.start.RelayAfterMS = 1000
	p.revoked = []*big.Int{dev.cert.Leaf.SerialNumber}
	s, err := m.client(t, p).Connect(ctxT(t), m.start, frame.Greeting{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn := s.Connection
	if conn.Transport != wire.TransportRelay || len(conn.Others) != 1 || !strings.Contains(conn.Others[0].Reason, "revoked") {
		t.Errorf("transport %s, others %+v", conn.Transport, conn.Others)
	}
}

func TestRelayErrorStatus(t *testing.T) {
	cases := []struct {
		status int
		code   string
	}{
		{http.StatusForbidden, "denied"},
		{http.StatusRequestTimeout, "consent_timeout"},
		{http.StatusConflict, "device_offline"},
		{http.StatusGone, "session_ended"},
	}
	for _, tc := range cases {
		t.Run(tc.code, func(t *testing.T) {
			p := newPKI(t)
			m := newFakeMP(t, p, &device{t: t, p: p, cert: p.devices["dev-1"]})
			m.relayCode, m.relayError = tc.status, &wire.Error{Error: wire.ErrorDetail{Code: tc.code, Message: "no"}}
			// With a direct address too: the refusal ends the attempt at once.
			m.start.Direct = []string{closedPort(t)}
			m.start.RelayAfterMS = 10
			begin := time.Now()
			_, err := m.client(t, p).Connect(ctxT(t), m.start, frame.Greeting{})
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != tc.status || Code(err) != tc.code || !strings.Contains(err.Error(), tc.code) {
				t.Fatalf("err = %v, want code %s", err, tc.code)
			}
			if time.Since(begin) > 5*time.Second {
				t.Errorf("the refusal took %s", time.Since(begin))
			}
		})
	}
}

func TestStartRefusesABadAnswer(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p, &device{t: t, p: p, cert: p.devices["dev-1"]})
	m.start.TicketID = "../../etc"
	if _, err := m.client(t, p).Start(ctxT(t), wire.SessionStartRequest{Device: "kiosk", Mode: "view"}); err == nil {
		t.Fatal("a ticket id that is not 32 hex digits was taken")
	}
	if _, err := NewClient("http://mp", &tls.Config{Certificates: []tls.Certificate{p.alice}, RootCAs: p.roots}, nil); err == nil {
		t.Error("a plain-HTTP MP URL was taken")
	}
}

// TestRelayAnswerBuffered: bytes the MP sends right after its 101 (the device's first TLS
// record, in the same segment) are not lost.
func TestRelayAnswerBuffered(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() { _, _ = b.Write([]byte("hello")); b.Close() }()
	br := bufio.NewReaderSize(a, 16)
	_, _ = br.Peek(1)
	got, err := io.ReadAll(&bufferedConn{Conn: a, r: br})
	if err != nil || string(got) != "hello" {
		t.Errorf("%q %v", got, err)
	}
}

// TestDeviceTookTheOtherLeg: both legs come up, and the device serves the relay and closes
// the direct leg: the helper follows the device's choice (the leg with its Hello).
func TestDeviceTookTheOtherLeg(t *testing.T) {
	p := newPKI(t)
	dev := &device{t: t, p: p, cert: p.devices["dev-1"]}
	m := newFakeMP(t, p, dev)
	m.start.Direct = []string{directListener(t, &device{t: t, p: p, cert: p.devices["dev-1"], tookOther: true})}
	m.start.RelayAfterMS = 10
	m.relayDelay = 100 * time.Millisecond // the direct leg's TLS completes first
	conn, s := open(t, m, m.client(t, p))
	if conn.Transport != wire.TransportRelay || len(conn.Others) != 1 || conn.Others[0].Kind != "other" {
		t.Fatalf("transport %s, others %+v", conn.Transport, conn.Others)
	}
	if err := s.Chat("here"); err != nil {
		t.Fatal(err)
	}
	next(t, s, frame.Chat)
}

// TestRelayAnswerHeadBounded: an MP that sends an endless answer head is cut off.
func TestRelayAnswerHeadBounded(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p, &device{t: t, p: p, cert: p.devices["dev-1"]})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: ibcm-relay\r\n")
		for range 10000 {
			if _, err := brw.WriteString("X-Filler: " + strings.Repeat("a", 100) + "\r\n"); err != nil {
				return
			}
		}
		_ = brw.Flush()
	}))
	srv.TLS = m.srv.TLS
	srv.StartTLS()
	defer srv.Close()
	c, err := NewClient(srv.URL, &tls.Config{Certificates: []tls.Certificate{p.alice}, RootCAs: p.roots}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(ctxT(t), m.start, frame.Greeting{}); err == nil || !strings.Contains(err.Error(), "head is over") {
		t.Errorf("err = %v, want the head refused", err)
	}
}
