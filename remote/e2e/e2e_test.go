package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// The security review's checks of the end-to-end TLS: each side refuses every peer but the
// one the ticket names, whatever else of the site presents a certificate.

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return &testCA{cert: c, key: key, pool: pool}
}

func (ca *testCA) leaf(t *testing.T, uri string, usage ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: c}
}

// handshake runs the two sides over a pipe and returns the device's and the helper's errors.
func handshake(server, client *tls.Config) (serr, cerr error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err, err
	}
	defer ln.Close()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err, err
	}
	defer b.Close()
	a, err := ln.Accept()
	if err != nil {
		return err, err
	}
	defer a.Close()
	_ = a.SetDeadline(time.Now().Add(10 * time.Second))
	_ = b.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan error, 1)
	go func() {
		s := tls.Server(a, server)
		err := s.Handshake()
		if err != nil {
			a.Close()
		}
		done <- err
	}()
	c := tls.Client(b, client)
	cerr = c.Handshake()
	if cerr != nil {
		b.Close()
	} else {
		// TLS 1.3: the client's certificate is checked after the client's Finished; a read
		// sees the server's refusal.
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, rerr := c.Read(make([]byte, 1))
		if rerr != nil && !errors.Is(rerr, net.ErrClosed) && !strings.Contains(rerr.Error(), "timeout") {
			cerr = rerr
		}
	}
	serr = <-done
	return serr, cerr
}

func TestDeviceRefusesEveryHelperButTheTicketsOne(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	dev := ca.leaf(t, "urn:ibcm:device:dev-1", x509.ExtKeyUsageClientAuth)
	alice := ca.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	expect := func(revoked func(*x509.Certificate) bool) HelperExpect {
		return HelperExpect{Roots: ca.pool, User: "alice", KeyHash: wire.PublicKeyHash(alice.Leaf), Revoked: revoked}
	}
	helperCfg := func(c tls.Certificate) *tls.Config { return HelperConfig(c, ca.pool, "dev-1", nil, nil) }
	if serr, cerr := handshake(DeviceConfig(dev, expect(nil)), helperCfg(alice)); serr != nil || cerr != nil {
		t.Fatalf("the ticket's helper: %v / %v", serr, cerr)
	}
	cases := map[string]struct {
		server *tls.Config
		client *tls.Config
	}{
		"another key of the same user":  {DeviceConfig(dev, expect(nil)), helperCfg(ca.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth))},
		"another user":                  {DeviceConfig(dev, expect(nil)), helperCfg(ca.leaf(t, "urn:ibcm:user:bob", x509.ExtKeyUsageClientAuth))},
		"a device certificate":          {DeviceConfig(dev, expect(nil)), helperCfg(ca.leaf(t, "urn:ibcm:device:alice", x509.ExtKeyUsageClientAuth))},
		"a site-server certificate":     {DeviceConfig(dev, expect(nil)), helperCfg(ca.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth))},
		"alice of another CA":           {DeviceConfig(dev, expect(nil)), helperCfg(other.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth))},
		"a server-only certificate":     {DeviceConfig(dev, expect(nil)), helperCfg(ca.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageServerAuth))},
		"the revoked key of the ticket": {DeviceConfig(dev, expect(func(c *x509.Certificate) bool { return c.Equal(alice.Leaf) })), helperCfg(alice)},
		"no certificate":                {DeviceConfig(dev, expect(nil)), HelperConfig(tls.Certificate{}, ca.pool, "dev-1", nil, nil)},
		"no ALPN, a plain client":       {DeviceConfig(dev, expect(nil)), &tls.Config{Certificates: []tls.Certificate{alice}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}},
		"no ALPN":                       {DeviceConfig(dev, expect(nil)), func() *tls.Config { c := helperCfg(alice); c.NextProtos = nil; return c }()},
		"another ALPN":                  {DeviceConfig(dev, expect(nil)), func() *tls.Config { c := helperCfg(alice); c.NextProtos = []string{"http/1.1"}; return c }()},
		"TLS 1.2":                       {DeviceConfig(dev, expect(nil)), func() *tls.Config { c := helperCfg(alice); c.MinVersion, c.MaxVersion = 0, tls.VersionTLS12; return c }()},
	}
	if cases["another key of the same user"].client.Certificates[0].Leaf == nil {
		t.Fatal("fixture")
	}
	// The key of a second alice certificate differs; make sure of it.
	if wire.PublicKeyHash(cases["another key of the same user"].client.Certificates[0].Leaf) == wire.PublicKeyHash(alice.Leaf) {
		t.Fatal("fixture: same key")
	}
	for name, c := range cases {
		serr, cerr := handshake(c.server, c.client)
		if serr == nil && cerr == nil {
			t.Errorf("%s: the device accepted it", name)
		}
		if name == "no ALPN, a plain client" && (serr == nil || !errors.Is(serr, ErrPeer)) {
			t.Errorf("%s: the device did not refuse it itself: %v", name, serr)
		}
	}
}

func TestHelperRefusesEveryDeviceButTheTicketsOne(t *testing.T) {
	ca := newCA(t)
	alice := ca.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	expect := HelperExpect{Roots: ca.pool, User: "alice", KeyHash: wire.PublicKeyHash(alice.Leaf)}
	for name, server := range map[string]tls.Certificate{
		"another device":      ca.leaf(t, "urn:ibcm:device:dev-2", x509.ExtKeyUsageClientAuth),
		"an MP":               ca.leaf(t, "urn:ibcm:site:TST:role:mp", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth),
		"a user":              ca.leaf(t, "urn:ibcm:user:dev-1", x509.ExtKeyUsageClientAuth),
		"dev-1 of another CA": newCA(t).leaf(t, "urn:ibcm:device:dev-1", x509.ExtKeyUsageClientAuth),
	} {
		serr, cerr := handshake(DeviceConfig(server, expect), HelperConfig(alice, ca.pool, "dev-1", nil, nil))
		if cerr == nil {
			t.Errorf("%s: the helper accepted it (device side: %v)", name, serr)
		} else if !errors.Is(cerr, ErrPeer) && !strings.Contains(cerr.Error(), "certificate") {
			t.Logf("%s: %v", name, cerr)
		}
	}
}

func TestReadPreamble(t *testing.T) {
	id := strings.Repeat("ab", 16)
	var b bytes.Buffer
	if err := WritePreamble(&b, id); err != nil {
		t.Fatal(err)
	}
	b.WriteString("\x16\x03\x01") // the TLS that follows is not consumed
	got, err := ReadPreamble(&b)
	if err != nil || got != id || b.String() != "\x16\x03\x01" {
		t.Fatalf("%q %v, left %q", got, err, b.String())
	}
	for _, bad := range []string{
		"\x16\x03\x01\x02\x00", // TLS without a preamble
		DirectPreamble + strings.Repeat("AB", 16) + "\n",
		DirectPreamble + strings.Repeat("ab", 15) + "\n",
		DirectPreamble + strings.Repeat("ab", 17) + "\n",
		"ibcm-session " + id + "\n",
		DirectPreamble + id + "\r\n",
		DirectPreamble + id, // cut
		strings.Repeat("x", 10000),
	} {
		if got, err := ReadPreamble(strings.NewReader(bad)); err == nil {
			t.Errorf("%q read as %q", bad, got)
		}
	}
}

// A preamble never reads more than MaxPreamble bytes.
func FuzzReadPreamble(f *testing.F) {
	f.Add([]byte(DirectPreamble + strings.Repeat("0", 32) + "\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		id, err := ReadPreamble(r)
		if read := len(b) - r.Len(); read > MaxPreamble {
			t.Fatalf("read %d bytes", read)
		}
		if err == nil && (len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "") {
			t.Fatalf("id %q", id)
		}
	})
}
