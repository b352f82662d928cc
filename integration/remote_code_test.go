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
// is refused as used, and the audit has the session. With a view code, the helper's keys
// never reach the guest's shell.
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
	// The guest's output may not command the helper's terminal: a title (OSC 2) it prints
	// never reaches the helper's pane, what follows it does.
	tm.text("sharer", `printf '\033]2;PWNED\007TITLE%s\n' 77`)
	tm.keys("sharer", "Enter")
	tm.waitFor("helper", "TITLE77", 10*time.Second)
	if title := tm.tmux("display-message", "-p", "-t", "helper", "#{pane_title}"); strings.Contains(title, "PWNED") {
		t.Errorf("the guest set the helper's terminal title: %q", title)
	}
	if title := tm.tmux("display-message", "-p", "-t", "sharer", "#{pane_title}"); !strings.Contains(title, "PWNED") {
		t.Logf("the sharer's own pane title is %q (tmux did not take the OSC there either)", title)
	}

	// The code works once.
	tm.open("again", nil, share+" --shell /bin/sh")
	tm.waitFor("again", "code_used", 15*time.Second)

	tm.keys("helper", "C-]", "q")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote code create exited %d:\n%s", code, tm.screen("helper"))
	}
	// A view code: the helper sees the sharer's shell and cannot type into it.
	tm.open("viewer", helen.env, bin.ibcm+" remote code create")
	code = securityCodeRE.FindString(tm.wait("viewer", "a security code", 15*time.Second, func(sc string) bool { return securityCodeRE.MatchString(sc) }))
	// --code - asks for the code without echoing it (not in the process list).
	tm.open("sharer2", nil, bin.client+" share --code - --site "+s.caURL+" --root-sha256 "+pin+" --mp "+s.mpInternet+" --shell /bin/sh")
	tm.waitFor("sharer2", "Security code (not shown):", 15*time.Second)
	tm.text("sharer2", code)
	tm.keys("sharer2", "Enter")
	if sc := tm.waitFor("sharer2", "allow view access for Helen Desk (helen)", 15*time.Second); strings.Contains(sc, code) {
		t.Errorf("the typed security code was echoed:\n%s", sc)
	}
	tm.keys("sharer2", "C-]", "y")
	tm.waitFor("viewer", "end to end encrypted", 15*time.Second)
	tm.text("viewer", "echo TYPED$((50+5))")
	tm.keys("viewer", "Enter")
	tm.text("sharer2", "echo SEEN$((60+6))")
	tm.keys("sharer2", "Enter")
	tm.waitFor("viewer", "SEEN66", 10*time.Second)
	if sc := tm.screen("sharer2"); strings.Contains(sc, "TYPED55") {
		t.Errorf("a view-mode helper's keys reached the guest's shell:\n%s", sc)
	}
	tm.keys("viewer", "C-]", "q")
	if code := tm.exited("viewer", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote code create (view) exited %d:\n%s", code, tm.screen("viewer"))
	}

	// A helper who gives up before the person at the device connects ends the session, and
	// the code dies with it.
	tm.open("giveup", helen.env, bin.ibcm+" remote code create")
	code = securityCodeRE.FindString(tm.wait("giveup", "a security code", 15*time.Second, func(sc string) bool { return securityCodeRE.MatchString(sc) }))
	tm.waitFor("giveup", "waiting for the person at the device", 10*time.Second)
	tm.keys("giveup", "C-c")
	if c := tm.exited("giveup", 15*time.Second); c == 0 {
		t.Fatalf("an interrupted code create exited 0:\n%s", tm.screen("giveup"))
	}
	tm.open("late", nil, bin.client+" share --code "+code+" --site "+s.caURL+" --root-sha256 "+pin+" --mp "+s.mpInternet+" --shell /bin/sh")
	tm.waitFor("late", "code_expired", 15*time.Second)

	var guest wire.Session
	waitFor(t, 10*time.Second, "the guest session ended in the audit", func() bool {
		for _, x := range s.sessions(t) {
			if strings.HasPrefix(x.Device, wire.GuestURIPrefix) && x.Mode == "control" {
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
