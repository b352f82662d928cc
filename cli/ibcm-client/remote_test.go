package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/internal/cliapp"
)

// sessions prints the local session log; --json prints its lines.
func TestSessionsPrintsTheLocalLog(t *testing.T) {
	dir := t.TempDir()
	log := `{"session":"0123456789abcdef0123456789abcdef","helper":"alice","sharer":"bob","mode":"control","transport":"relay","outcome":"completed","ended":"2026-12-07T09:00:00Z","bytes_to_device":12,"bytes_from_device":345}
{"session":"fedcba9876543210fedcba9876543210","helper":"eve","outcome":"refused","code":"ticket_replayed","ended":"2026-12-07T09:05:00Z","bytes_to_device":0,"bytes_from_device":0}
`
	if err := os.WriteFile(filepath.Join(dir, "sessions.log"), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "sessions", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0123456789ab", "alice", "bob", "control", "relay", "completed", "12/345", "refused (ticket_replayed)"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	out, err = run(t, "sessions", "--dir", dir, "--json")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, `"code":"ticket_replayed"`) {
		t.Errorf("--json: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "sessions.log"), []byte("{not json\n"), 0o600)
	if _, err := run(t, "sessions", "--dir", dir); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a bad log line: %v", err)
	}
}

func TestConsentNeedsOneAction(t *testing.T) {
	for _, args := range [][]string{{"consent"}, {"consent", "--accept", "--deny"}, {"consent", "--watch", "--accept"}} {
		if _, err := run(t, args...); err == nil || cliapp.ExitCode(err) != cliapp.ExitUsage {
			t.Errorf("%v: %v", args, err)
		}
	}
	// A socket that is not there (or not root's) is refused before anything is sent.
	if _, err := run(t, "consent", "--accept", "--share-socket", filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("consent with no agent succeeded")
	}
}

func TestShareNeedsATerminal(t *testing.T) {
	if _, err := run(t, "share", "--share-socket", filepath.Join(t.TempDir(), "none.sock")); err == nil { // no terminal under go test (or, in one, no socket)
		t.Errorf("share without a terminal: %v", err)
	}
}
