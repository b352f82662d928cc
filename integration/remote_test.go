package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestRemoteTerminalSession: a device on the internet, its user sharing their terminal with
// `ibcm-client share`, a helpdesk helper with `ibcm remote start` — both on real terminals.
// View mode drops the helper's keys; control needs the sharer's yes, and so does each
// escalation; chat in Chinese and Arabic arrives intact both ways; a denial and no answer
// end as denied and consent-timeout; the audit says so; roles and scopes are enforced.
func TestRemoteTerminalSession(t *testing.T) {
	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-rc1")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, blackHole(t)) // no intranet: the internet MP and the relay
	sock, _ := startSharingAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent's notification channel", func() bool { return statusOf(t, dev).Notify })
	id := deviceIDOf(t, dev)
	helen := addHelper(t, s, "helen", "Help Desk Operator", "Helen Desk", s.mpInternet)

	tm := newTerminals(t)
	tm.open("sharer", nil, bin.client+" share --share-socket "+sock+" --shell /bin/sh")
	tm.waitFor("sharer", "ibcm: connected to the ibcm agent", 10*time.Second)

	// 1. View, accepted by the sharer.
	tm.open("helper", helen.env, bin.ibcm+" remote start pc-rc1 --mode view --reason 'printer queue'")
	tm.waitFor("sharer", "Ctrl-] y/n: allow view access for Helen Desk (helen), Service Desk, Contoso IT? (printer queue)", 10*time.Second)
	tm.keys("sharer", "C-]", "y")
	tm.waitFor("helper", "view", 10*time.Second)
	s.session(t, id, "the session active on the relay", func(x wire.Session) bool {
		return x.State == wire.SessionActive && x.Transport == wire.TransportRelay && x.E2E && x.Helper == "helen"
	})
	tm.text("sharer", "echo SHARED$((40+2))")
	tm.keys("sharer", "Enter")
	tm.waitFor("helper", "SHARED42", 10*time.Second)

	// The helper types in view mode, then asks for control: the sharer is asked again, and
	// once control is granted the helper's next command runs — the one typed in view mode
	// never did (it was typed first, so it would be on the screen before).
	tm.text("helper", "echo VIEWMARK$((20+3))")
	tm.keys("helper", "Enter")
	tm.keys("helper", "C-]", "c")
	tm.waitFor("sharer", "allow control access for Helen Desk", 10*time.Second)
	tm.keys("sharer", "C-]", "y")
	tm.waitFor("helper", "control", 10*time.Second)
	tm.text("helper", "echo CTRL$((30+4))")
	tm.keys("helper", "Enter")
	tm.waitFor("sharer", "CTRL34", 10*time.Second)
	if sc := tm.screen("sharer"); strings.Contains(sc, "VIEWMARK23") {
		t.Errorf("a key typed in view mode reached the shell:\n%s", sc)
	}

	// Chat both ways, in Chinese and Arabic.
	const hello, reply = "你好，打印机坏了", "مرحبا، شكرا"
	tm.keys("helper", "C-]", "t")
	tm.text("helper", hello)
	tm.keys("helper", "Enter")
	tm.waitFor("sharer", hello, 10*time.Second)
	tm.keys("sharer", "C-]", "c")
	tm.text("sharer", reply)
	tm.keys("sharer", "Enter")
	tm.waitFor("helper", reply, 10*time.Second)

	// The helper ends the session: exit 0, and the audit has it all.
	tm.keys("helper", "C-]", "q")
	if code := tm.exited("helper", 15*time.Second); code != 0 {
		t.Fatalf("ibcm remote start exited %d:\n%s", code, tm.screen("helper"))
	}
	done := s.session(t, id, "the session completed", func(x wire.Session) bool { return x.State == wire.SessionEnded })
	if done.Outcome != wire.OutcomeCompleted || done.Sharer == "" || done.Reason != "printer queue" || !done.E2E ||
		len(done.Modes) < 2 || done.Modes[0].Mode != "view" || done.Modes[len(done.Modes)-1].Mode != "control" || done.BytesOut == 0 {
		t.Errorf("audit of the completed session: %+v", done)
	}
	tm.close("helper")

	// 2. Denied by the sharer.
	tm.open("helper2", helen.env, bin.ibcm+" remote start pc-rc1 --mode control")
	tm.waitFor("sharer", "allow control access for Helen Desk", 10*time.Second)
	tm.keys("sharer", "C-]", "n")
	if code := tm.exited("helper2", 15*time.Second); code == 0 || !strings.Contains(tm.screen("helper2"), "denied") {
		t.Errorf("a denied session: exit %d\n%s", code, tm.screen("helper2"))
	}
	s.session(t, id, "the denial audited", func(x wire.Session) bool { return x.Outcome == wire.OutcomeDenied })

	// 3. Not answered within the policy's consent timeout.
	s.setRemotePolicy(t, func(rc map[string]any) { rc["consent_timeout"] = "5s" })
	waitFor(t, 10*time.Second, "the agent's policy with the short consent timeout", func() bool { return statusOf(t, dev).PolicyVersion >= 2 })
	tm.open("helper3", helen.env, bin.ibcm+" remote start pc-rc1 --mode control")
	tm.waitFor("sharer", "allow control access for Helen Desk", 10*time.Second)
	if code := tm.exited("helper3", 20*time.Second); code == 0 || !strings.Contains(tm.screen("helper3"), "consent_timeout") {
		t.Errorf("an unanswered session: exit %d\n%s", code, tm.screen("helper3"))
	}
	s.session(t, id, "the consent timeout audited", func(x wire.Session) bool { return x.Outcome == wire.OutcomeConsentTimeout })

	// 4. Refusals at the broker, each with its code.
	s.ibcm(t, "group", "create", "lab")
	s.ibcm(t, "role", "create", "tier1", "--permission", "FullControl", "--permission", "ReadDevices")
	ana := addHelper(t, s, "ana", "Read-only Analyst", "Ana Lyst", s.mpInternet)
	sam := addHelper(t, s, "sam", "Help Desk Operator", "Sam Scoped", s.mpInternet, "lab")
	tia := addHelper(t, s, "tia", "tier1", "Tia Tier", s.mpInternet)
	pat := addHelper(t, s, "pat", "PKI Administrator", "Pat Key", s.mpInternet)
	for _, tc := range []struct {
		who  helperUser
		mode string
		want string
	}{
		{ana, "view", "forbidden"},
		{sam, "view", "not_found"},
		{tia, "unattended", "forbidden"},                // no Unattended permission
		{helen, "unattended", "unattended_not_allowed"}, // the permission, not the policy
	} {
		r := tc.who.as(t, "remote", "start", "pc-rc1", "--mode", tc.mode)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s starting a %s session: exit %d, want %s\n%s%s", tc.who.name, tc.mode, r.code, tc.want, r.stdout, r.stderr)
		}
	}
	// A PKI Administrator cannot make a user (admin-profile) certificate.
	if r := pat.as(t, "ca", "token", "create", "--profile", "admin"); r.code == 0 {
		t.Errorf("a PKI Administrator made a login token:\n%s", r.stdout)
	}
	key := filepath.Join(t.TempDir(), "u")
	if r := pat.as(t, "ca", "issue", "--profile", "admin", "--subject", "mallory", "--out", key); r.code == 0 {
		t.Errorf("a PKI Administrator issued a user certificate:\n%s", r.stdout)
	}
	if _, err := os.Stat(key + ".crt"); err == nil {
		if b, _ := os.ReadFile(key + ".crt"); len(b) > 0 {
			t.Error("a PKI Administrator's refused issue left a certificate")
		}
	}
	tm.close("sharer")
}
