package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Security review: a record's error holds what a DP or an install command said (a hostile
// DP's error message, 64 KiB of it); printed raw, its terminal escapes reached the root
// terminal running `ibcm-client deployments`.
func TestDeploymentsPrintsNoTerminalEscape(t *testing.T) {
	dir := t.TempDir()
	recs := []deploy.Record{{ID: "d\x1b[2J1", Package: "tool", Version: "1.0", State: wire.DeployPending, InPolicy: true,
		Error: "no DP served a valid manifest: https://dp1: 404 Not Found: \x1b]0;owned\x07\x1b[31mred\u009b1m (not_found)", Updated: time.Now()}}
	b, _ := json.Marshal(map[string]any{"version": 1, "deployments": recs})
	if err := os.WriteFile(filepath.Join(dir, deploy.StateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "deployments", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(out, "\x1b\x07\u009b") || !strings.Contains(out, "red") {
		t.Fatalf("the table carries a terminal control: %q", out)
	}
}
