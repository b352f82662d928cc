package mp

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"github.com/ibcm-project/ibcm/internal/access"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/tlspark"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/recording"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

var hierarchy = catest.Hierarchy

// fixture is a real CA and a real MP over one site database, the MP's two listeners on
// real TLS on 127.0.0.1.
type fixture struct {
	db       *sitedb.DB
	ca       *ca.CA
	mp       *MP
	intranet string // base URLs
	internet string
	roots    *x509.CertPool
	verifier *trust.Verifier
	auditKey []byte // the site's audit private key
	ctx      context.Context
}

// mpInstance is one more MP of the fixture's site (startMP).
type mpInstance struct {
	mp                 *MP
	intranet, internet string
	cancel             context.CancelFunc
	servers            []*httptest.Server
}

func newFixture(t testing.TB, db *sitedb.DB, o Options) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := hierarchy()
	c, err := ca.New(ctx, db, ca.Options{SiteCode: "TST", Hierarchy: h, PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	revoked := &trust.RevokedSet{}
	if err := trust.WatchRevoked(ctx, db, revoked, time.Hour, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	v := &trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{h.Root}, []*x509.Certificate{h.Issuing}), Revoked: revoked}
	if o.ID == "" {
		o.ID = "mp-test"
	}
	f := &fixture{db: db, ca: c, roots: x509.NewCertPool(), verifier: v, ctx: ctx}
	f.roots.AddCert(h.Root)
	if f.auditKey, _, err = recording.NewKey(); err != nil {
		t.Fatal(err)
	}
	in := f.startMP(t, o)
	f.mp, f.intranet, f.internet = in.mp, in.intranet, in.internet
	return f
}

// startMP runs one more MP of the site over the fixture's database, with its own site-server
// certificate and its two listeners on 127.0.0.1 (their URLs registered as its own).
func (f *fixture) startMP(t testing.TB, o Options) *mpInstance {
	t.Helper()
	ctx, cancel := context.WithCancel(f.ctx)
	if o.Mode == "" {
		o.Mode = ModeBoth
	}
	o.DefaultPolicy = DefaultPolicy(testBootstrap)
	o.Log = zerolog.Nop()
	serverCert := f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp", DNS: []string{"127.0.0.1"}, Role: "mp"})
	o.SiteKey = serverCert.PrivateKey.(crypto.Signer)
	for _, der := range serverCert.Certificate {
		c, _ := x509.ParseCertificate(der)
		o.SiteChain = append(o.SiteChain, c)
	}
	o.AuditKey = f.auditKey
	in := &mpInstance{cancel: cancel}
	for _, loc := range []string{wire.Intranet, wire.Internet} {
		srv := httptest.NewUnstartedServer(nil)          // its listener is open: the URL is known before New
		srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what the tests want
		in.servers = append(in.servers, srv)
		if loc == wire.Intranet {
			in.intranet = "https://" + srv.Listener.Addr().String()
		} else {
			in.internet = "https://" + srv.Listener.Addr().String()
		}
	}
	if o.IntranetURL == "" {
		o.IntranetURL = in.intranet
	}
	if o.InternetURL == "" {
		o.InternetURL = in.internet
	}
	m, err := New(ctx, f.db, f.verifier, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	in.mp = m
	for i, loc := range []string{wire.Intranet, wire.Internet} {
		srv := in.servers[i]
		m.Configure(srv.Config, loc)
		cfg := m.TLSConfig(nil)
		cfg.Certificates = []tls.Certificate{serverCert}
		srv.Listener = tlspark.NewListener(srv.Listener, cfg) // as site.Run serves an MP
		srv.Start()
		t.Cleanup(srv.Close)
	}
	t.Cleanup(cancel)
	return in
}

// stop shuts the MP down as a killed one would look to the site: listeners closed, its
// background work ended.
func (in *mpInstance) stop() {
	for _, s := range in.servers {
		s.CloseClientConnections()
		s.Close()
	}
	in.cancel()
	in.mp.Close()
}

// issue has the site CA issue a certificate for a key made here.
// user makes name a user with role over the whole site (none when role is "") and issues
// them an admin certificate.
func (f *fixture) user(t testing.TB, name, role string) tls.Certificate {
	t.Helper()
	ctx := context.Background()
	if err := f.ca.Access().AddUser(ctx, access.User{Name: name}, "test"); err != nil && !errors.Is(err, access.ErrExists) {
		t.Fatal(err)
	}
	if role != "" {
		if err := f.ca.Access().Assign(ctx, name, role, nil, "test"); err != nil {
			t.Fatal(err)
		}
	}
	return f.issue(t, ca.IssueSpec{Profile: ca.Admin, Subject: name})
}

func (f *fixture) issue(t testing.TB, spec ca.IssueSpec) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: spec.Subject}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := f.ca.Issue(context.Background(), spec, csr, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
}

func (f *fixture) device(t testing.TB, name string) tls.Certificate {
	return f.issue(t, ca.IssueSpec{Profile: ca.Client, Subject: name})
}

func deviceID(c tls.Certificate) string { return trust.Identify(c.Leaf).ID }

// handmade signs a certificate with the site's issuing CA outside every profile (for
// certificates the CA would never issue, such as serverAuth only or already expired).
func handmade(t testing.TB, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	h := hierarchy()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	der, err := x509.CreateCertificate(rand.Reader, tmpl, h.Issuing, &key.PublicKey, h.IssuingKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, h.Issuing.Raw}, PrivateKey: key, Leaf: leaf}
}

// client returns an HTTP client presenting cert (none when nil), with its own connections.
func (f *fixture) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: f.roots}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false}}
}

var testBootstrap = wire.Bootstrap{SiteCode: "TST", InternetMPs: []string{"ibcm.example.test:443"},
	IntranetDNSSuffixes: []string{"corp.test"}, SRVNames: []string{"_ibcm-mp._tcp"}}

// holdSlot takes the MP's only request slot (Options.MaxInFlight: 1) with a status upload
// whose body never finishes, and returns once the MP counts it in flight. The caller sends
// nothing meanwhile: a request that had the slot when the upload arrived would get the
// upload shed, and then nothing would hold the slot. Closing the returned writer ends the
// upload.
func (f *fixture) holdSlot(t testing.TB, cert *tls.Certificate) io.Closer {
	t.Helper()
	if cap(f.mp.inflight) != 1 {
		t.Fatalf("holdSlot wants an MP with one slot, not %d", cap(f.mp.inflight))
	}
	// The slot is a buffered channel: its length is the number of requests in flight. A
	// request whose answer the caller already has may still hold it for a moment.
	for deadline := time.Now().Add(10 * time.Second); len(f.mp.inflight) != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the MP's slot stays taken although no request is in flight")
		}
	}
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	answered := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", f.intranet+"/v1/status", pr)
		resp, err := f.client(cert).Do(req)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	go func() { _, _ = pw.Write([]byte(`{"messages":[`)) }()
	for deadline := time.Now().Add(10 * time.Second); len(f.mp.inflight) == 0; time.Sleep(time.Millisecond) {
		select {
		case status := <-answered:
			t.Fatalf("the upload meant to hold the slot was answered %d", status)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload meant to hold the slot never reached the MP")
		}
	}
	return pw
}
