package integration

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

var securityCodeRE = regexp.MustCompile(`\b[2-9A-HJKMNP-Z]{5}-[2-9A-HJKMNP-Z]{5}\b`)

// TestRemoteSecurityCode: a site with security codes on; a helper runs `ibcm remote code
// create`, the person at a device that is not enrolled (no agent, no state) runs
// `ibcm-client share --code` with the code, the site's CA URL and root fingerprint — both
// on real terminals. The sharer accepts, the helper sees the device as "not enrolled: guest
// <user>" and types a command that runs in the sharer's shell; the same code a second time
// is refused as used, and the audit has the session.
func TestRemoteSecurityCode(t *testing.T) {
	s := initSite(t, "sqlite")
	editSection(t, s.path("site.yaml"), s.path("site.yaml"), "ca", func(ca map[string]any) { ca["security_codes"] = true })
	s.start(t, "site", "up", "--dir", s.dir)
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)
	pin := fingerprint(t, s.path("ca/root.crt"))

	tm := newTerminals(t)
	tm.open("helper", helen.env, bin.ibcm+" remote code create --mode control --reason 'call 4711'")
	code := securityCodeRE.FindString(tm.wait("helper", "a security code", 15*time.Second, func(sc string) bool { return securityCodeRE.MatchString(sc) }))
	share := bin.client + " share --code " + strings.ToLower(code) + " --site " + s.caURL + " --root-sha256 " + pin + " --mp " + s.mpInternet
	tm.open("sharer", nil, share+" --shell /bin/sh")
	tm.waitFor("sharer", "allow control access for Helen Desk (helen)", 15*time.Second)
	tm.keys("sharer", "C-]", "y")
	tm.waitFor("helper", "not enrolled: guest ", 15*time.Second)
	tm.waitFor("helper", "end to end encrypted", 15*time.Second)
	tm.text("helper", "echo GUEST$((40+2))")
	tm.keys("helper", "Enter")
	tm.waitFor("sharer", "GUEST42", 10*time.Second)

	// The code works once.
	tm.open("again", nil, share+" --shell /bin/sh")
	tm.waitFor("again", "code_used", 15*time.Second)

	tm.keys("helper", "C-]", "q")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote code create exited %d:\n%s", code, tm.screen("helper"))
	}
	var guest wire.Session
	waitFor(t, 10*time.Second, "the guest session ended in the audit", func() bool {
		for _, x := range s.sessions(t) {
			if strings.HasPrefix(x.Device, wire.GuestURIPrefix) {
				guest = x
			}
		}
		return guest.State == wire.SessionEnded
	})
	if !strings.HasPrefix(guest.DeviceName, "not enrolled: guest ") || guest.Helper != "helen" || guest.Reason != "call 4711" || guest.Sharer == "" ||
		guest.Outcome != wire.OutcomeCompleted || guest.Transport != wire.TransportRelay || guest.StartedAt == nil || guest.BytesOut == 0 {
		t.Errorf("audit of the guest session: %+v", guest)
	}
}
