package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"image/png"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConsoleBrowserHarness proves the browser harness on static pages: Chromium trusts a
// server whose certificate chains to a root in its NSS database and refuses one from
// another CA (so nothing ignores certificate errors), the host name resolves to loopback,
// and the waits, typing, reading, fetch, canvas pixels and screenshots work.
func TestConsoleBrowserHarness(t *testing.T) {
	const host = "console.harness.test"
	trusted, trustedRoot := throwawayCA(t, "trusted harness root")
	untrusted, _ := throwawayCA(t, "untrusted harness root")

	page := http.NewServeMux()
	page.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; connect-src 'self'")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(`<!doctype html><html><head><title>harness</title><script src="/app.js" defer></script></head>
<body><h1 id="hello">Hello, harness</h1><input id="in"><div id="echo"></div><div id="screen"></div></body></html>`))
	})
	page.HandleFunc("GET /app.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript")
		_, _ = w.Write([]byte(`
document.getElementById("in").addEventListener("input", e => {
	document.getElementById("echo").textContent = "echo:" + e.target.value;
});
const c = document.createElement("canvas");
c.width = 64; c.height = 32;
const g = c.getContext("2d");
g.fillStyle = "#20c040"; g.fillRect(0, 0, 32, 32);
document.getElementById("screen").appendChild(c);
`))
	})
	page.HandleFunc("POST /api", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Test") != "yes" {
			http.Error(w, `{"code":"csrf"}`, http.StatusForbidden)
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	good := serveTLS(t, page, trusted.issue(t, host))
	bad := serveTLS(t, page, untrusted.issue(t, host))

	b := newBrowser(t, 90*time.Second, []string{trustedRoot}, host)

	// Another CA's certificate: refused, not ignored.
	if err := b.openErr(bad); !isCertError(err) {
		t.Fatalf("a server of an untrusted CA: %v, want a certificate error", err)
	}

	b.open(good + "/")
	if got := b.text("#hello"); got != "Hello, harness" {
		t.Fatalf("#hello says %q", got)
	}
	if !strings.HasPrefix(b.location(), "https://"+host+":") {
		t.Fatalf("at %s", b.location())
	}
	b.typeInto("#in", "typed 42")
	b.waitText("#echo", "echo:typed 42")
	b.clear("#in")
	b.until("the input cleared", `document.getElementById("echo").textContent === "echo:"`)
	b.click("#in")
	b.keys("k\r")
	b.until("one k typed", `document.getElementById("echo").textContent === "echo:k"`)
	if n := b.canvasInk("#screen"); n != 32*32 {
		t.Errorf("%d inked pixels on the canvas, want %d", n, 32*32)
	}
	if n := b.count("#screen canvas"); n != 1 {
		t.Errorf("%d canvases", n)
	}
	if code, _ := b.fetchStatus("POST", "/api", nil, `{}`); code != http.StatusForbidden {
		t.Errorf("POST without the header: %d", code)
	}
	if code, body := b.fetchStatus("POST", "/api", map[string]string{"X-Test": "yes"}, `{}`); code != http.StatusOK || body != `{"ok":true}` {
		t.Errorf("POST with the header: %d %s", code, body)
	}
	b.until("the title", `document.title === "harness"`)

	// A private tab has cookies of its own.
	evalJS[string](b, `document.cookie = "who=first; Secure; SameSite=Strict; Path=/"`)
	p := b.private()
	p.open(good + "/")
	if c := evalJS[string](p, `document.cookie`); c != "" {
		t.Errorf("the private tab has the first's cookies: %q", c)
	}
	if c := evalJS[string](b, `document.cookie`); c != "who=first" {
		t.Errorf("the first tab's cookies: %q", c)
	}
	if code := p.openStatus(good + "/nothing"); code != http.StatusNotFound {
		t.Errorf("GET /nothing: %d", code)
	}

	shot := b.png()
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatal(err)
	}
	if sz := img.Bounds().Size(); sz.X != browserWidth || sz.Y != browserHeight {
		t.Errorf("a screenshot of %v, want %dx%d", sz, browserWidth, browserHeight)
	}
	t.Setenv("IBCM_SCREENSHOTS", t.TempDir())
	b.screenshot("harness")
	if _, err := os.Stat(filepath.Join(os.Getenv("IBCM_SCREENSHOTS"), "harness.png")); err != nil {
		t.Error(err)
	}
}

// testCA is a throwaway CA for the harness's own test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// throwawayCA makes a CA and writes its root as PEM in a temporary file.
func throwawayCA(t *testing.T, name string) (*testCA, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}, f
}

// issue makes a server certificate for host.
func (ca *testCA) issue(t *testing.T, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: host},
		DNSNames: []string{host}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serveTLS serves h over TLS on loopback with cert and returns the URL under the
// certificate's host name (the browser maps it to 127.0.0.1).
func serveTLS(t *testing.T, h http.Handler, cert tls.Certificate) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Replace(srv.URL, "127.0.0.1", leaf.DNSNames[0], 1)
}
