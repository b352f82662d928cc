package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestReenrollAfterUnblock: a blocked device, once unblocked, re-enrolls with the token
// `ibcm device unblock` prints, through its running agent (enroll --force, no --name, over
// the control socket). It keeps its device id, name, groups and status messages, and the
// same agent process is back online with the new certificate (check-in and notification
// channel) without a restart. The token works once. On SQLite and on PostgreSQL, whose
// group commit of enrollments differs (ca/issued.go).
func TestReenrollAfterUnblock(t *testing.T) {
	for _, store := range []string{"sqlite", "postgres"} {
		t.Run(store, func(t *testing.T) { testReenrollAfterUnblock(t, store) })
	}
}

func testReenrollAfterUnblock(t *testing.T, store string) {
	s := startSite(t, store)
	dev := enrollDevice(t, s, "pc-40")
	id := deviceIDOf(t, dev)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, blackHole(t)) // no intranet: the internet MP
	startAgent(t, dev, resolv)
	waitFor(t, 10*time.Second, "a first check-in and the notification channel", func() bool {
		st := statusOf(t, dev)
		return st.LastCheckin != nil && st.Notify
	})
	s.ibcm(t, "group", "create", "kiosks")
	s.ibcm(t, "group", "add", "kiosks", id)
	must(t, bin.client, "report", "--dir", dev, "--component", "lifecycle-test", "--text", "before the block")
	waitFor(t, 10*time.Second, "the message delivered", func() bool { return statusOf(t, dev).SpoolDepth == 0 })
	oldSerial := statusOf(t, dev).Serial

	s.ibcm(t, "device", "block", id)
	waitFor(t, 5*time.Second, "the agent's channel closed", func() bool { return !statusOf(t, dev).Notify })

	r := s.try(t, "device", "unblock", id)
	token := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(token, ca.TokenPrefix) || strings.Contains(token, "\n") ||
		!strings.Contains(r.stderr, "unblocked "+id) || !strings.Contains(r.stderr, "as device "+id+", pc-40") {
		t.Fatalf("device unblock: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pin := fingerprint(t, s.path("ca/root.crt"))
	reenrolled := time.Now()
	r = run(t, bin.client, "enroll", "--dir", dev, "--force", "--token-file", tokenFile, "--ca", s.caURL, "--root-sha256", pin)
	if r.code != 0 || !strings.Contains(r.stdout, "through the running agent") || !strings.Contains(r.stdout, "enrolled pc-40 as device "+id) {
		t.Fatalf("re-enroll: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var st agentStatus
	waitFor(t, 20*time.Second, "the same agent online with the new certificate", func() bool {
		st = statusOf(t, dev)
		return st.AgentRunning && st.Serial != oldSerial && st.Notify && st.LastCheckin != nil && st.LastCheckin.After(reenrolled.Add(-time.Second))
	})

	var d wire.Device
	waitFor(t, 5*time.Second, "device show with the new certificate and its channel", func() bool {
		return json.Unmarshal([]byte(s.ibcm(t, "device", "show", "--json", id)), &d) == nil && d.Connected >= 1 && d.Serial == st.Serial
	})
	if d.ID != id || d.Name != "pc-40" || d.Blocked || !slices.Contains(d.Groups, "kiosks") || len(d.Warnings) != 0 {
		t.Errorf("device after re-enrollment: %+v, want id %s, name pc-40, unblocked, in kiosks, no warnings", d, id)
	}
	if out := s.ibcm(t, "device", "show", id); !strings.Contains(out, id) || !strings.Contains(out, "kiosks") {
		t.Errorf("device show:\n%s", out)
	}
	if out := s.ibcm(t, "device", "list"); strings.Count(out, "pc-40") != 1 {
		t.Errorf("device list shows pc-40 other than once:\n%s", out)
	}
	var n int
	if err := s.db(t).QueryRow(context.Background(), `SELECT COUNT(*) FROM status_messages WHERE device_id = ? AND text = 'before the block'`, id).Scan(&n); err != nil || n != 1 {
		t.Errorf("the device's message from before the block: %d stored (%v), want 1", n, err)
	}

	// The token is spent.
	other := filepath.Join(t.TempDir(), "other")
	r = run(t, bin.client, "enroll", "--dir", other, "--token-file", tokenFile, "--ca", s.caURL, "--root-sha256", pin)
	if r.code == 0 || !strings.Contains(r.stderr, "token_used") {
		t.Errorf("second use of the re-enroll token: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// db opens the site's database (SQLite file or PostgreSQL) until the test ends.
func (s *testSite) db(t *testing.T) *sitedb.DB {
	t.Helper()
	driver, dsn := sitedb.SQLite, s.path("site.db")
	if s.dsn != "" {
		driver, dsn = sitedb.Postgres, s.dsn
	}
	db, err := sitedb.Open(context.Background(), driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
