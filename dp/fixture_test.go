package dp

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/pull"
	"github.com/ibcm-project/ibcm/internal/peertest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

const testSite = "TST"

// pki is a test site's CA hierarchy and the identities the tests present.
type pki struct {
	dir              string
	root, issuing    *x509.Certificate
	rootKey, issKey  crypto.Signer
	foreignRoot      *x509.Certificate
	foreignKey       crypto.Signer
	signer           *x509.Certificate // content signer
	signerKey        crypto.Signer
	rootFile         string
	mpCert, dpCert   tls.Certificate
	dpCertFile       string
	dpKeyFile        string
	dp2CertFile      string // a second DP, dp2
	dp2KeyFile       string
	serial           int64
	mu               sync.Mutex
	identities       map[string]*identity
	foreignIdentity  *identity
	deviceID, userID string
}

// identity is a client certificate with its files (leaf + issuing CA, key) for curl.
type identity struct {
	leaf     *x509.Certificate
	pair     tls.Certificate
	certFile string
	keyFile  string
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (p *pki) nextSerial() *big.Int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serial++
	return big.NewInt(1000 + p.serial)
}

func (p *pki) make(t testing.TB, tmpl *x509.Certificate, parent *x509.Certificate, parentKey crypto.Signer, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = p.nextSerial()
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ca(cn string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
}

func uri(s string) []*url.URL {
	u, _ := url.Parse(s)
	return []*url.URL{u}
}

func pemOf(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func writeKeyFile(t testing.TB, path string, key crypto.Signer) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), identities: map[string]*identity{}, deviceID: "0b6f3c2e-1111-4a34-9830-20527b338cb5", userID: "alice"}
	rk, ik := newKey(t), newKey(t)
	p.rootKey, p.issKey = rk, ik
	p.root = p.make(t, ca("TST Root"), nil, nil, rk)
	p.issuing = p.make(t, ca("TST Issuing"), p.root, rk, ik)
	fk := newKey(t)
	p.foreignKey = fk
	p.foreignRoot = p.make(t, ca("Foreign Root"), nil, nil, fk)
	p.rootFile = filepath.Join(p.dir, "root.crt")
	if err := os.WriteFile(p.rootFile, pemOf(p.root), 0o644); err != nil {
		t.Fatal(err)
	}
	server := func(cn, role string, usages ...x509.ExtKeyUsage) (*x509.Certificate, crypto.Signer) {
		k := newKey(t)
		c := p.make(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, URIs: uri("urn:ibcm:site:" + testSite + ":role:" + role),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages}, p.issuing, ik, k)
		return c, k
	}
	mc, mk := server("mp1", "mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	p.mpCert = tls.Certificate{Certificate: [][]byte{mc.Raw, p.issuing.Raw}, PrivateKey: mk, Leaf: mc}
	dc, dk := server("dp1", "dp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	p.dpCert = tls.Certificate{Certificate: [][]byte{dc.Raw, p.issuing.Raw}, PrivateKey: dk, Leaf: dc}
	p.dpCertFile, p.dpKeyFile = filepath.Join(p.dir, "dp1.crt"), filepath.Join(p.dir, "dp1.key")
	if err := os.WriteFile(p.dpCertFile, pemOf(dc, p.issuing), 0o644); err != nil {
		t.Fatal(err)
	}
	writeKeyFile(t, p.dpKeyFile, dk)
	d2, d2k := server("dp2", "dp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	p.dp2CertFile, p.dp2KeyFile = filepath.Join(p.dir, "dp2.crt"), filepath.Join(p.dir, "dp2.key")
	if err := os.WriteFile(p.dp2CertFile, pemOf(d2, p.issuing), 0o644); err != nil {
		t.Fatal(err)
	}
	writeKeyFile(t, p.dp2KeyFile, d2k)
	sc, sk := server("content-signer", "content", x509.ExtKeyUsageCodeSigning)
	p.signer, p.signerKey = sc, sk
	return p
}

// client issues (once) a client certificate: kind "device", "device2", "user" or "user2".
func (p *pki) client(t testing.TB, kind string) *identity {
	t.Helper()
	p.mu.Lock()
	id := p.identities[kind]
	p.mu.Unlock()
	if id != nil {
		return id
	}
	var u string
	switch kind {
	case "device":
		u = "urn:ibcm:device:" + p.deviceID
	case "device2":
		u = "urn:ibcm:device:22222222-2222-4a34-9830-20527b338cb5"
	case "user":
		u = "urn:ibcm:user:" + p.userID
	case "user2":
		u = "urn:ibcm:user:bob"
	}
	k := newKey(t)
	c := p.make(t, &x509.Certificate{Subject: pkix.Name{CommonName: kind}, URIs: uri(u), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, p.issuing, p.issKey, k)
	id = p.writeIdentity(t, kind, c, k, p.issuing)
	p.mu.Lock()
	p.identities[kind] = id
	p.mu.Unlock()
	return id
}

func (p *pki) writeIdentity(t testing.TB, name string, c *x509.Certificate, k crypto.Signer, chain ...*x509.Certificate) *identity {
	t.Helper()
	id := &identity{leaf: c, certFile: filepath.Join(p.dir, name+".crt"), keyFile: filepath.Join(p.dir, name+".key")}
	id.pair = tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
	for _, x := range chain {
		id.pair.Certificate = append(id.pair.Certificate, x.Raw)
	}
	if err := os.WriteFile(id.certFile, pemOf(append([]*x509.Certificate{c}, chain...)...), 0o644); err != nil {
		t.Fatal(err)
	}
	writeKeyFile(t, id.keyFile, k)
	return id
}

// foreign is a device certificate from another CA.
func (p *pki) foreign(t testing.TB) *identity {
	t.Helper()
	if p.foreignIdentity == nil {
		k := newKey(t)
		c := p.make(t, &x509.Certificate{Subject: pkix.Name{CommonName: "intruder"}, URIs: uri("urn:ibcm:device:" + p.deviceID),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, p.foreignRoot, p.foreignKey, k)
		p.foreignIdentity = p.writeIdentity(t, "foreign", c, k)
	}
	return p.foreignIdentity
}

// sign makes a package version of the given files (their contents) and signs it.
func (p *pki) sign(t testing.TB, name, version string, files map[string][]byte) wire.DPPackage {
	t.Helper()
	m := &wire.Manifest{Name: name, Version: version, ChunkSize: manifest.MinChunkSize, Created: time.Now().Add(-time.Minute).UTC().Truncate(time.Second)}
	for path, data := range files {
		f := wire.ManifestFile{Path: path, Size: int64(len(data)), Mode: 0o644, SHA256: sha(data), Chunks: []string{}}
		for off := 0; off < len(data); off += manifest.MinChunkSize {
			end := min(off+manifest.MinChunkSize, len(data))
			f.Chunks = append(f.Chunks, sha(data[off:end]))
		}
		m.Files = append(m.Files, f)
	}
	sm, err := manifest.Sign(m, p.signerKey, []*x509.Certificate{p.signer, p.issuing})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(sm)
	return wire.DPPackage{Name: name, Version: version, ManifestSHA256: manifest.Hash(sm.Manifest), Manifest: raw}
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// fakeMP speaks the MP's side of the DP routes over mutual TLS.
type fakeMP struct {
	t   *testing.T
	srv *httptest.Server

	mu          sync.Mutex
	registered  []wire.DPRegistration
	assignments wire.DPAssignments
	snapshot    wire.DPEvent
	holdFeed    bool // never send the snapshot
	feeds       map[chan wire.DPEvent]bool
	states      []wire.DPStateReport
	allowed     map[string]bool // users with ManageContent
	authorized  []wire.DPAuthorize

	feedOpen chan struct{} // a feed connected (after its snapshot)
	reported chan struct{}
}

func newFakeMP(t *testing.T, p *pki) *fakeMP {
	t.Helper()
	m := &fakeMP{t: t, feeds: map[chan wire.DPEvent]bool{}, allowed: map[string]bool{}, snapshot: wire.DPEvent{Type: wire.DPEventSnapshot},
		feedOpen: make(chan struct{}, 16), reported: make(chan struct{}, 64)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/dp/register", func(w http.ResponseWriter, r *http.Request) {
		var reg wire.DPRegistration
		if err := json.NewDecoder(r.Body).Decode(&reg); err != nil || reg.ID != r.TLS.PeerCertificates[0].Subject.CommonName {
			http.Error(w, `{"error":{"code":"bad","message":"bad registration"}}`, http.StatusBadRequest)
			return
		}
		m.mu.Lock()
		m.registered = append(m.registered, reg)
		m.mu.Unlock()
		writeJSON(w, http.StatusOK, wire.DPRegistered{Site: testSite})
	})
	mux.HandleFunc("GET /v1/bundle", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, wire.Bundle{Roots: string(pemOf(p.root))})
	})
	mux.HandleFunc("GET /v1/dp/assignments", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		a := m.assignments
		m.mu.Unlock()
		if a.Packages == nil {
			a.Packages = []wire.DPPackage{}
		}
		writeJSON(w, http.StatusOK, a)
	})
	mux.HandleFunc("POST /v1/dp/state", func(w http.ResponseWriter, r *http.Request) {
		var rep wire.DPStateReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		m.mu.Lock()
		m.states = append(m.states, rep)
		m.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		select {
		case m.reported <- struct{}{}:
		default:
		}
	})
	mux.HandleFunc("POST /v1/dp/authorize", func(w http.ResponseWriter, r *http.Request) {
		var a wire.DPAuthorize
		if err := json.NewDecoder(r.Body).Decode(&a); err != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		m.mu.Lock()
		m.authorized = append(m.authorized, a)
		ok := m.allowed[a.User] && a.Permission == "ManageContent"
		m.mu.Unlock()
		if ok {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusForbidden, wire.Error{Error: wire.ErrorDetail{Code: "forbidden", Message: "no"}})
	})
	mux.HandleFunc("GET /v1/dp/feed", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		hold, snap := m.holdFeed, m.snapshot
		ch := make(chan wire.DPEvent, 16)
		if !hold {
			m.feeds[ch] = true
		}
		m.mu.Unlock()
		defer func() {
			m.mu.Lock()
			delete(m.feeds, ch)
			m.mu.Unlock()
		}()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		if hold {
			<-r.Context().Done()
			return
		}
		enc := json.NewEncoder(w)
		_ = enc.Encode(snap)
		w.(http.Flusher).Flush()
		m.feedOpen <- struct{}{}
		for {
			select {
			case <-r.Context().Done():
				return
			case ev := <-ch:
				_ = enc.Encode(ev)
				w.(http.Flusher).Flush()
			}
		}
	})
	m.srv = httptest.NewUnstartedServer(mux)
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	m.srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.mpCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	m.srv.StartTLS()
	t.Cleanup(m.close)
	return m
}

func (m *fakeMP) close() {
	m.srv.CloseClientConnections()
	m.srv.Close()
}

// send puts an event on every open feed.
func (m *fakeMP) send(ev wire.DPEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.feeds) == 0 {
		m.t.Fatal("no feed is open")
	}
	for ch := range m.feeds {
		ch <- ev
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// runningDP is a DP serving on loopback for a test.
type runningDP struct {
	dp       *DP
	urls     map[string]string // role → https://127.0.0.1:port
	events   chan wire.DPEvent
	cancel   func()
	settings Settings
}

// settingsFor is a DP's settings for the test PKI and fake MP.
func settingsFor(p *pki, m *fakeMP, dir string) Settings {
	s := Settings{ID: "dp1", Mode: wire.DPModeIntranet, IntranetListen: "127.0.0.1:0", InternetListen: "127.0.0.1:0",
		TLSCert: p.dpCertFile, TLSKey: p.dpKeyFile, Roots: p.rootFile, SiteCode: testSite, Library: filepath.Join(dir, "content")}
	if m != nil {
		s.MPURL = m.srv.URL
	} else {
		s.MPURL = "https://127.0.0.1:1"
	}
	s.SetDefaults(Defaults{})
	return s
}

// startDP runs a DP until the end of the test. waitReady waits for the first snapshot.
func startDP(t *testing.T, s Settings, waitReady bool) *runningDP {
	t.Helper()
	r := &runningDP{urls: map[string]string{}, events: make(chan wire.DPEvent, 64), settings: s}
	d, err := New(Options{Settings: s, Log: zerolog.Nop(), Pull: pull.Options{StartJitter: -1, MinBackoff: 50 * time.Millisecond}, OnEvent: func(ev wire.DPEvent) {
		select {
		case r.events <- ev:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.dp = d
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, srv := range d.Servers() {
		if err := srv.Listen(); err != nil {
			t.Fatal(err)
		}
		r.urls[srv.Role] = "https://" + srv.Listener.Addr().String()
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(zerolog.Nop()) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); d.Run(ctx) }()
	r.cancel = func() {
		cancel()
		for _, srv := range d.Servers() {
			srv.HTTP.Close()
		}
		wg.Wait()
	}
	t.Cleanup(r.cancel)
	if waitReady {
		r.waitEvent(t, wire.DPEventSnapshot)
	}
	return r
}

// waitEvent waits (5 s at most) until the DP applied an event of type typ.
func (r *runningDP) waitEvent(t *testing.T, typ string) wire.DPEvent {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-r.events:
			if ev.Type == typ {
				return ev
			}
		case <-timeout:
			t.Fatalf("the DP did not apply a %s event", typ)
		}
	}
}

// curlResult is what curl saw.
type curlResult struct {
	status  int
	headers http.Header
	body    []byte
	err     error // curl failed (a refused handshake)
	stderr  string
}

// curl runs the real curl against url with the identity (none when nil) and extra headers.
func curl(t *testing.T, p *pki, id *identity, method, u string, headers ...string) curlResult {
	t.Helper()
	bin := peertest.Need(t, "curl")
	dir := t.TempDir()
	hdrFile, bodyFile := filepath.Join(dir, "h"), filepath.Join(dir, "b")
	args := []string{"-sS", "--http1.1", "--cacert", p.rootFile, "-D", hdrFile, "-o", bodyFile, "-w", "%{http_code}", "--max-time", "10"}
	if method == http.MethodHead {
		args = append(args, "-I")
	} else {
		args = append(args, "-X", method)
	}
	if id != nil {
		args = append(args, "--cert", id.certFile, "--key", id.keyFile)
	}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	cmd := exec.Command(bin, append(args, u)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	res := curlResult{err: err, stderr: stderr.String(), headers: http.Header{}}
	if err != nil {
		return res
	}
	code := strings.TrimSpace(string(out))
	if _, err := fmtSscan(code, &res.status); err != nil {
		t.Fatalf("curl printed %q", code)
	}
	res.body, _ = os.ReadFile(bodyFile)
	hf, _ := os.Open(hdrFile)
	if hf != nil {
		defer hf.Close()
		sc := bufio.NewScanner(hf)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
				res.headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
	}
	return res
}

// goClient is an HTTP/1.1 client with the identity (none when nil).
func goClient(p *pki, id *identity) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	cfg := &tls.Config{RootCAs: pool}
	if id != nil {
		cfg.Certificates = []tls.Certificate{id.pair}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

var _ = io.Discard

func fmtSscan(s string, n *int) (int, error) { return fmt.Sscan(s, n) }

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
