package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The console listener of a running site: server-only TLS with the MP's certificate (no
// client certificate asked for), and a login with the link the MP makes for the admin.
func TestConsoleListener(t *testing.T) {
	cfg, _ := runSite(t)
	if cfg.MP.ConsoleListen == "" || !strings.HasPrefix(cfg.MP.ConsoleURL, "https://127.0.0.1:") {
		t.Fatalf("console %q %q", cfg.MP.ConsoleListen, cfg.MP.ConsoleURL)
	}
	rootPEM, err := os.ReadFile(cfg.Path(cfg.CA.RootCert))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := ca.ParseCerts(rootPEM)
	pool := x509.NewCertPool()
	pool.AddCert(roots[0])
	asked := false
	browserTLS := &tls.Config{RootCAs: pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		asked = true
		return &tls.Certificate{}, nil
	}}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: browserTLS}}

	// The admin's certificate gets a link from the MP.
	pair, err := tls.LoadX509KeyPair(cfg.Path(AdminCert), cfg.Path(AdminKey))
	if err != nil {
		t.Fatal(err)
	}
	admin := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}
	resp, err := admin.Post(cfg.MP.IntranetURL+"/v1/admin/console/links", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	var link wire.ConsoleLink
	err = json.NewDecoder(resp.Body).Decode(&link)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || !strings.HasPrefix(link.URL, cfg.MP.ConsoleURL+"/login/ibcm_") {
		t.Fatalf("link: HTTP %d %+v %v", resp.StatusCode, link, err)
	}
	resp, err = browser.Get(link.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/devices" || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		t.Fatalf("login: HTTP %d at %s", resp.StatusCode, resp.Request.URL)
	}
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != cfg.MP.ID {
		t.Errorf("the console presents %q, not the MP's certificate", cn)
	}
	if asked {
		t.Error("the console listener asked for a client certificate")
	}
	resp, err = browser.Get(cfg.MP.ConsoleURL + "/api/v1/admin/devices")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("devices through the console: HTTP %d", resp.StatusCode)
	}
	hs, err := Status(context.Background(), cfg, RoleMP)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, h := range hs {
		found = found || h.Role == "console" && h.Healthy
	}
	if !found {
		t.Errorf("site status: %+v", hs)
	}
}
