package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestCopiedIdentityRenewal: a copy of a device's state directory (its key and
// certificate) cannot grow a second line. The real device renews; the copy's renewal is
// refused with renewal_superseded and `ibcm device show` lists the clone warning; revoking
// the original certificate for keyCompromise cuts off the successor the device now uses,
// on the MP within a second.
func TestCopiedIdentityRenewal(t *testing.T) {
	needTool(t, "curl")
	needTool(t, "openssl")
	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-40")
	id := deviceIDOf(t, dev)
	if r := curlMP(t, s, dev, s.mpInternet+"/v1/whoami"); r.code != 0 {
		t.Fatalf("whoami: %s%s", r.stdout, r.stderr)
	}
	clone := copyState(t, dev)
	original := strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", filepath.Join(clone, "cert.pem"), "-noout", "-serial")), "serial=")

	must(t, bin.client, "renew", "--dir", dev)
	assertRefused(t, run(t, bin.client, "renew", "--dir", clone), "renewal_superseded")
	if out := s.ibcm(t, "device", "show", id); !strings.Contains(out, "WARNING") || !strings.Contains(out, "probable clone: certificate "+original) {
		t.Errorf("device show does not warn of the clone:\n%s", out)
	}

	if r := curlMP(t, s, dev, s.mpInternet+"/v1/whoami"); r.code != 0 {
		t.Fatalf("whoami with the renewed certificate: %s%s", r.stdout, r.stderr)
	}
	// The copy still holds the original certificate. Its renewal was refused, so the line is
	// contested: the MP does not refuse the original (the copy might have been the one that
	// renewed first), and device show warns of the clone until the admin revokes.
	if r := curlMP(t, s, clone, s.mpInternet+"/v1/whoami"); r.code != 0 || strings.Contains(r.stdout, "certificate_superseded") {
		t.Errorf("the copy's certificate on a contested line: %s%s, want it still served", r.stdout, r.stderr)
	}
	if out := s.ibcm(t, "device", "show", id); !strings.Contains(out, "probable clone: certificate "+original+" was already renewed") {
		t.Errorf("device show does not warn of the clone:\n%s", out)
	}
	start := time.Now()
	s.ibcm(t, "ca", "revoke", "--reason", "keyCompromise", original)
	for curlMP(t, s, dev, s.mpInternet+"/v1/whoami").code == 0 {
		if time.Since(start) > time.Second {
			t.Fatal("the MP still accepts the successor a second after its predecessor was revoked for keyCompromise")
		}
		time.Sleep(10 * time.Millisecond) // polling the condition itself
	}
}

// copyState copies a device's state directory (its key and certificate), as a cloned
// disk image holds it.
func copyState(t *testing.T, dev string) string {
	t.Helper()
	clone := filepath.Join(t.TempDir(), "clone")
	if err := os.Mkdir(clone, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"key.pem", "cert.pem", "roots.pem", "state.json"} {
		b, err := os.ReadFile(filepath.Join(dev, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(clone, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return clone
}

// TestRenewalSupersedesAcrossMPProcesses: two MP processes on one PostgreSQL. A copy of a
// device (a copied state directory that never renews) holds a notification channel on
// MP 2, which has served it. The real device renews and presents its new certificate at
// MP 1: within a second the copy's channel on MP 2 is closed ("certificate superseded"),
// MP 2 refuses the copy with 403 certificate_superseded, and device show lists one clone
// warning.
func TestRenewalSupersedesAcrossMPProcesses(t *testing.T) {
	needTool(t, "curl")
	s := initSite(t, "postgres")
	s.start(t, "site", "up", "--dir", s.dir)
	mp2In, mp2Out := freeAddr(t), freeAddr(t)
	second := s.path("site-mp2.yaml")
	editConfig(t, s.path("site.yaml"), second, func(mp map[string]any) {
		mp["id"] = "mp2"
		mp["intranet_listen"], mp["intranet_url"] = mp2In, "https://"+mp2In
		mp["internet_listen"], mp["internet_url"] = mp2Out, "https://"+mp2Out
	})
	s.start(t, "mp", "serve", "--config", second)

	dev := enrollDevice(t, s, "pc-41")
	id := deviceIDOf(t, dev)
	clone := copyState(t, dev)
	original := strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", filepath.Join(clone, "cert.pem"), "-noout", "-serial")), "serial=")
	if r := curlMP(t, s, clone, "https://"+mp2Out+"/v1/whoami"); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Fatalf("the copy on MP 2: %s%s", r.stdout, r.stderr)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(clone, "cert.pem"), filepath.Join(clone, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(s.path("ca/root.crt"))
	roots.AppendCertsFromPEM(rootPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "wss://"+mp2Out+"/v1/notify", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("the copy's notification channel on MP 2: %v", err)
	}
	defer ws.CloseNow()
	waitFor(t, 5*time.Second, "the channel recorded", func() bool {
		var d wire.Device
		return json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d) == nil && d.Connected == 1
	})

	must(t, bin.client, "renew", "--dir", dev)
	start := time.Now()
	if r := curlMP(t, s, dev, s.mpInternet+"/v1/whoami"); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Fatalf("the renewed certificate on MP 1: %s%s", r.stdout, r.stderr)
	}
	readCtx, stop := context.WithTimeout(context.Background(), time.Second)
	defer stop()
	_, _, err = ws.Read(readCtx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Reason != "certificate superseded" {
		t.Fatalf("the copy's channel on MP 2 a second after the renewal was presented on MP 1: %v, want closed with \"certificate superseded\"", err)
	}
	t.Logf("the copy's channel on MP 2 closed %v after the renewal was presented on MP 1", time.Since(start))
	for _, base := range []string{"https://" + mp2Out, "https://" + mp2In, s.mpInternet} {
		if r := curlMP(t, s, clone, base+"/v1/policy"); r.code != 0 || !strings.Contains(r.stdout, "certificate_superseded") {
			t.Errorf("the copy at %s: %s%s, want 403 certificate_superseded", base, r.stdout, r.stderr)
		}
	}
	var d wire.Device
	if err := json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone: certificate "+original+" is still presented") {
		t.Errorf("device warnings %q, want one clone warning naming %s", d.Warnings, original)
	}
}
