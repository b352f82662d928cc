package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/site"
)

// startSiteWithConsole runs the CA and the MP (with its web console) of a new site until
// the test ends.
func startSiteWithConsole(t *testing.T) *site.Config {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "site")
	addr := func() string {
		a, err := freeport.Addr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	cfg, err := site.Init(context.Background(), site.InitOptions{Dir: dir, SiteCode: "CLI", IntranetName: "ibcm.corp.test", InternetName: "ibcm.example.test",
		CAAddr: addr(), CAPublicAddr: addr(), MPIntranetAddr: addr(), MPInternetAddr: addr(), ConsoleAddr: addr(), MPMode: "intranet"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}, 8), make(chan error, 1)
	go func() {
		done <- site.Run(ctx, cfg, lineFunc(func(l string) {
			if strings.Contains(l, "listening on") {
				ready <- struct{}{}
			}
		}), zerolog.Nop(), site.RoleCA, site.RoleMP)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for range len(cfg.Listeners(site.RoleCA, site.RoleMP)) {
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("the site stopped: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("the site is not listening after 20s")
		}
	}
	return cfg
}

// TestConsoleLoginLogout: `ibcm console login` prints a one-time URL that logs a browser in
// once; `ibcm console logout` ends that browser's session.
func TestConsoleLoginLogout(t *testing.T) {
	cfg := startSiteWithConsole(t)
	dir := cfg.Dir()
	var out bytes.Buffer
	stderr, err := ibcm(t, &out, "console", "login", "--dir", dir)
	if err != nil {
		t.Fatalf("console login: %v\n%s", err, stderr)
	}
	url := strings.TrimSpace(out.String())
	if !strings.HasPrefix(url, cfg.MP.ConsoleURL+"/login/ibcm_") || strings.Contains(url, "\n") || !strings.Contains(stderr, "before") {
		t.Fatalf("console login printed %q, stderr %q", out.String(), stderr)
	}
	rootPEM, _ := os.ReadFile(cfg.Path(cfg.CA.RootCert))
	roots, err := ca.ParseCerts(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(roots[0])
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(u string) int {
		t.Helper()
		resp, err := browser.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status := get(url); status != 200 {
		t.Fatalf("opening the URL: HTTP %d", status)
	}
	if status := get(cfg.MP.ConsoleURL + "/api/me"); status != 200 {
		t.Fatalf("/api/me: HTTP %d", status)
	}
	if status := get(url); status != http.StatusUnauthorized {
		t.Errorf("the URL a second time: HTTP %d", status)
	}
	if got := mustIBCM(t, "console", "logout", "--dir", dir); !strings.Contains(got, "ended 1 of your web-console session(s)") {
		t.Errorf("logout printed %q", got)
	}
	if status := get(cfg.MP.ConsoleURL + "/api/me"); status != http.StatusUnauthorized {
		t.Errorf("/api/me after logout: HTTP %d", status)
	}
	// Another user's, with ManageAccess (the site's first admin has it); flags in any order.
	mustIBCM(t, "user", "add", "bob", "--role", "Read-only Analyst", "--dir", dir)
	if got := mustIBCM(t, "console", "logout", "--user", "bob", "--dir", dir); !strings.Contains(got, "ended 0 web-console session(s) of bob") {
		t.Errorf("logout --user printed %q", got)
	}
	if _, err := ibcm(t, io.Discard, "console", "logout", "--user", "../bob", "--dir", dir); err == nil || exitCode(err) != exitUsage {
		t.Errorf("a bad --user: %v", err)
	}
}
