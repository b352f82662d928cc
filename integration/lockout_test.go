package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCopyRenewedFirstDoesNotLockOutDevice: a copy of a device's state directory renews
// first and presents its renewal at the MP, so the MP refuses the real device's
// certificate as superseded. The real device's agent then contests the line at once
// (its renewal is refused with renewal_superseded, which the CA records): the MP serves
// it again, flagged, within supersededRecheck. Before, the agent went on asking the MP
// (403 certificate_superseded at every request) until its renewal was due at 2/3 of the
// certificate's life: whoever copied a device's key and certificate could lock the real
// device out of every MP for weeks by renewing first. Security review finding; its test.
func TestCopyRenewedFirstDoesNotLockOutDevice(t *testing.T) {
	needTool(t, "curl")
	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-43")
	id := deviceIDOf(t, dev)
	clone := copyState(t, dev)

	must(t, bin.client, "renew", "--dir", clone)
	if r := curlMP(t, s, clone, s.mpInternet+"/v1/whoami"); r.code != 0 || strings.Contains(r.stdout, "error") {
		t.Fatalf("the copy's renewal at the MP: %s%s", r.stdout, r.stderr)
	}
	if r := curlMP(t, s, dev, s.mpInternet+"/v1/whoami"); !strings.Contains(r.stdout, "certificate_superseded") {
		t.Fatalf("the real device after the copy presented its renewal: %s%s, want 403 certificate_superseded", r.stdout, r.stderr)
	}

	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv) // no nameservers: the internet MP at once
	startAgent(t, dev, resolv)
	// The MP asks the store again a minute after it first refused (supersededRecheck); the
	// agent's hello backs off (at most 127 s to its eighth try, past that minute).
	waitFor(t, 3*time.Minute, "the real device's agent checked in again", func() bool {
		st := statusOf(t, dev)
		return st.LastCheckin != nil
	})
	if out := s.ibcm(t, "device", "show", id); !strings.Contains(out, "probable clone") {
		t.Errorf("device show does not warn of the clone:\n%s", out)
	}
}
