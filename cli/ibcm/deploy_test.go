package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

func cannedContent() []wire.ContentVersion {
	return []wire.ContentVersion{{
		Name: "agent-tools", Version: "1.4.0", ManifestSHA256: strings.Repeat("ab", 32), Size: 3 << 20,
		Files:   []wire.ManifestFile{{Path: "bin/tool", Size: 3 << 20, Mode: 0o755, SHA256: strings.Repeat("cd", 32), Chunks: []string{strings.Repeat("ef", 32)}}},
		Install: &wire.InstallSpec{Command: "sh install.sh", Timeout: "10m0s", SuccessCodes: []int{0, 2}},
		Created: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), AddedBy: "alice", Deployments: 1,
		DPs: []wire.DPPackageState{
			{Name: "dp1", State: wire.DPReady, Percent: 100},
			{Name: "dp2", State: wire.DPSyncing, Percent: 40},
			{Name: "dp3", State: wire.DPFailed, Error: "no source answered\x1b[2J"},
		},
	}, {
		Name: "wallpaper", Version: "2026.12", ManifestSHA256: strings.Repeat("12", 32), Size: 1000,
		Files:   []wire.ManifestFile{{Path: "corp.png", Size: 1000, Mode: 0o644, SHA256: strings.Repeat("34", 32), Chunks: []string{strings.Repeat("34", 32)}}},
		Created: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), AddedBy: "bob",
	}}
}

// TestContentCommandsOutput: list, show, distribute and remove print their tables and
// JSON; a removal refused because a deployment uses the version says what to do.
func TestContentCommandsOutput(t *testing.T) {
	s := newContentSite(t)
	s.content = cannedContent()
	run := func(args ...string) (string, error) {
		t.Helper()
		out, stderr, err := runIBCM(t, "", append(args, s.flags...)...)
		if stderr != "" && err == nil {
			t.Logf("stderr: %s", stderr)
		}
		return out, err
	}

	out, err := run("content", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NAME VERSION SIZE INSTALL DEPLOYMENTS MANIFEST CREATED ADDED BY", "agent-tools 1.4.0 3.0 MiB yes 1 abababababab 2026-12-07T12:00:00Z alice",
		"wallpaper 2026.12 1000 B no 0 121212121212"} {
		if !strings.Contains(oneSpace(out), want) {
			t.Errorf("content list:\n%s\nwant %q", out, want)
		}
	}
	out, err = run("content", "list", "--json")
	var cvs []wire.ContentVersion
	if err != nil || json.Unmarshal([]byte(out), &cvs) != nil || len(cvs) != 2 || cvs[1].Name != "wallpaper" {
		t.Errorf("content list --json: %v %q", err, out)
	}

	out, err = run("content", "show", "agent-tools", "--version", "1.4.0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"install sh install.sh", "(timeout 10m0s, success codes 0,2)", "deployments 1", "bin/tool 3145728 0755 " + strings.Repeat("cd", 32),
		"dp1 ready -", "dp2 syncing 40 %", "dp3 failed no source answered[2J"} {
		if !strings.Contains(oneSpace(out), want) {
			t.Errorf("content show:\n%s\nwant %q", out, want)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Error("content show printed a terminal escape from the site's data")
	}
	out, err = run("content", "show", "wallpaper", "--json", "--version", "2026.12")
	var cv wire.ContentVersion
	if err != nil || json.Unmarshal([]byte(out), &cv) != nil || cv.Version != "2026.12" || cv.Install != nil {
		t.Errorf("content show --json: %v %q", err, out)
	}
	if _, err := run("content", "show", "nope", "--version", "1"); err == nil || !strings.Contains(err.Error(), "no such package version (not_found, HTTP 404)") {
		t.Errorf("content show of a missing version: %v", err)
	}

	out, err = run("content", "distribute", "wallpaper", "--version", "2026.12", "--dp", "dp2", "--dp", "dp3,dp2")
	if err != nil || !strings.Contains(out, "distributing wallpaper 2026.12 to dp2, dp3") || !strings.Contains(oneSpace(out), "dp3 pending -") {
		t.Errorf("content distribute: %v\n%s", err, out)
	}
	out, err = run("content", "distribute", "wallpaper", "--version", "2026.12", "--json")
	if err != nil || json.Unmarshal([]byte(out), &cv) != nil || len(cv.DPs) != 0 {
		t.Errorf("content distribute --json to every DP: %v %q", err, out)
	}

	_, err = run("content", "remove", "agent-tools", "--version", "1.4.0")
	if err == nil || exitCode(err) != exitError || !strings.Contains(err.Error(), "agent-tools 1.4.0 is still deployed: remove its deployments first (ibcm deploy list, then ibcm deploy remove ID)") ||
		!strings.Contains(err.Error(), "1 deployments use agent-tools 1.4.0") {
		t.Errorf("content remove of a deployed version: %v", err)
	}
	if out, err := run("content", "remove", "wallpaper", "--version", "2026.12"); err != nil || out != "removed wallpaper 2026.12\n" {
		t.Errorf("content remove: %v %q", err, out)
	}
}

// TestDeployCommandsOutput: create, list, status (counts, then one row per device with
// its progress, exit code and DP) and remove.
func TestDeployCommandsOutput(t *testing.T) {
	s := newContentSite(t)
	run := func(args ...string) (string, error) {
		t.Helper()
		out, _, err := runIBCM(t, "", append(args, s.flags...)...)
		return out, err
	}
	out, err := run("deploy", "create", "agent-tools", "--version", "1.4.0", "--group", "kiosks", "--install")
	if err != nil || out != "deployment d0000000000000000000000000000001: agent-tools 1.4.0 to group kiosks (install)\n" {
		t.Errorf("deploy create: %v %q", err, out)
	}
	out, err = run("deploy", "create", "agent-tools", "--json", "--version", "1.4.0", "--group", "kiosks")
	var d wire.DeploymentInfo
	if err != nil || json.Unmarshal([]byte(out), &d) != nil || d.Install || d.Package != "agent-tools" {
		t.Errorf("deploy create --json: %v %q", err, out)
	}
	if _, err := run("deploy", "create", "agent-tools", "--version", "1.4.0", "--group", "finance"); err == nil || !strings.Contains(err.Error(), "not in your scope (forbidden, HTTP 403)") {
		t.Errorf("deploy create out of scope: %v", err)
	}

	zero, three := 0, 3
	updated := time.Date(2026, 12, 7, 12, 5, 0, 0, time.UTC)
	s.mu.Lock()
	s.deploys[0].Counts = map[string]int{wire.DeployInstalled: 1, wire.DeployDownloading: 1, wire.DeployFailed: 1, wire.DeployPending: 1, "mystery": 1}
	s.deploys[0].Devices = []wire.DeploymentDevice{
		{DeviceID: "dev-1", Name: "kiosk-1", State: wire.DeployInstalled, ExitCode: &zero, DP: "dp1", Updated: updated},
		{DeviceID: "dev-2", Name: "kiosk-2", State: wire.DeployDownloading, Percent: 40, DP: "dp2", Updated: updated},
		{DeviceID: "dev-3", Name: "kiosk-3\x1b]0;x\x07", State: wire.DeployFailed, ExitCode: &three, DP: "dp1", Error: "exit code 3 is not a success code", Updated: updated},
		{DeviceID: "dev-4", Name: "kiosk-4", State: wire.DeployPending},
	}
	s.mu.Unlock()

	out, err = run("deploy", "list")
	if err != nil || !strings.Contains(oneSpace(out), "d0000000000000000000000000000001 agent-tools 1.4.0 kiosks install installed 1, downloading 1, pending 1, failed 1, mystery 1 (5 devices)") ||
		!strings.Contains(oneSpace(out), "download only pending 2 (2 devices)") {
		t.Errorf("deploy list: %v\n%s", err, out)
	}
	out, err = run("deploy", "list", "--json")
	var ds []wire.DeploymentInfo
	if err != nil || json.Unmarshal([]byte(out), &ds) != nil || len(ds) != 2 || ds[0].Counts[wire.DeployFailed] != 1 {
		t.Errorf("deploy list --json: %v %q", err, out)
	}

	out, err = run("deploy", "status", "d0000000000000000000000000000001")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(oneSpace(out), "\n")
	want := []string{
		"deployment d0000000000000000000000000000001: agent-tools 1.4.0 to group kiosks (install), created 2026-12-07T12:00:00Z by alice",
		"installed 1, downloading 1, pending 1, failed 1, mystery 1 (5 devices)",
		"",
		"DEVICE NAME STATE EXIT DP ERROR UPDATED",
		"dev-1 kiosk-1 installed 0 dp1 - 2026-12-07T12:05:00Z",
		"dev-2 kiosk-2 downloading 40 % - dp2 - 2026-12-07T12:05:00Z",
		"dev-3 kiosk-3]0;x failed 3 dp1 exit code 3 is not a success code 2026-12-07T12:05:00Z",
		"dev-4 kiosk-4 pending - - - -",
		"",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("deploy status:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	out, err = run("deploy", "status", "--json", "d0000000000000000000000000000001")
	if err != nil || json.Unmarshal([]byte(out), &d) != nil || len(d.Devices) != 4 || *d.Devices[2].ExitCode != 3 || d.Devices[1].Percent != 40 {
		t.Errorf("deploy status --json: %v %q", err, out)
	}
	if _, err := run("deploy", "status", "nope"); err == nil || !strings.Contains(err.Error(), "no such deployment") {
		t.Errorf("deploy status of a missing deployment: %v", err)
	}
	if out, err := run("deploy", "remove", "d0000000000000000000000000000001"); err != nil || out != "removed deployment d0000000000000000000000000000001\n" {
		t.Errorf("deploy remove: %v %q", err, out)
	}
}

func TestContentAndDeployUsageErrors(t *testing.T) {
	freshHome(t)
	id := []string{"--mp", "https://127.0.0.1:1", "--ca", "https://127.0.0.1:1", "--cert", "c", "--key", "k", "--ca-root", "r"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"add without version", []string{"content", "add", "x", "f"}, "--version is required"},
		{"add without path", []string{"content", "add", "x", "--version", "1"}, "needs NAME PATH..."},
		{"a bad name", []string{"content", "add", "Bad Name", "/dev/null", "--version", "1"}, `NAME "Bad Name"`},
		{"a bad version", []string{"content", "add", "x", "f", "--version", "-1"}, `--version: must be letters`},
		{"a bad success code", []string{"content", "add", "x", "f", "--version", "1", "--install-command", "true", "--success-codes", "0,256"}, "--success-codes: must be exit codes 0–255"},
		{"success codes without a command", []string{"content", "add", "x", "f", "--version", "1", "--success-codes", "0,2"}, "go with --install-command"},
		{"a blank command", []string{"content", "add", "x", "f", "--version", "1", "--install-command", " "}, "--install-command: must be 1 to"},
		{"a long timeout", []string{"content", "add", "x", "f", "--version", "1", "--install-command", "true", "--install-timeout", "25h"}, "--install-timeout: must be above 0 and at most 24h0m0s"},
		{"a small chunk", []string{"content", "add", "x", "f", "--version", "1", "--chunk-size", "1KiB"}, "--chunk-size: must be a size from 64KiB to 64MiB"},
		{"a missing file", []string{"content", "add", "x", "/nonexistent/file", "--version", "1"}, "PATH /nonexistent/file: no such file or directory"},
		{"a device file", append([]string{"content", "add", "x", "/dev/null", "--version", "1"}, id...), "is a character device"},
		{"show without version", []string{"content", "show", "x"}, "--version is required"},
		{"remove with two names", []string{"content", "remove", "x", "y", "--version", "1"}, `unexpected argument "y"`},
		{"distribute to an empty id", []string{"content", "distribute", "x", "--version", "1", "--dp", ","}, "--dp: an empty DP id"},
		{"deploy without group", []string{"deploy", "create", "x", "--version", "1"}, "--group is required"},
		{"deploy to a blank group", []string{"deploy", "create", "x", "--version", "1", "--group", " "}, "--group: must name a device group"},
		{"deploy a bad name", []string{"deploy", "create", "X", "--version", "1", "--group", "g"}, `NAME "X"`},
		{"status without id", []string{"deploy", "status"}, "needs ID"},
		{"status of a blank id", []string{"deploy", "status", " "}, "ID must not be empty"},
		{"no identity", []string{"deploy", "list"}, "--dir DIR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, _, err := runIBCM(t, "", tc.args...)
			if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v (exit %d), want exit %d saying %s", err, exitCode(err), exitUsage, tc.want)
			}
			if stdout != "" {
				t.Errorf("printed %q", stdout)
			}
		})
	}
}
