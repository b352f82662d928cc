package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
