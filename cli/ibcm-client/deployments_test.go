package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/manifest/manifesttest"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func TestDeploymentsPrintsTheLocalRecord(t *testing.T) {
	dir := t.TempDir()
	code := 7
	recs := []deploy.Record{
		{ID: "d1", Package: "tool", Version: "1.0", State: wire.DeployInstalled, Percent: 100, InPolicy: true, Final: true, DP: "https://dp1:8446", Updated: time.Now()},
		{ID: "d2", Package: "bad", Version: "2", State: wire.DeployFailed, ExitCode: &code, Error: "install: exit code 7;\noutput: oops", Final: true, Updated: time.Now()},
	}
	b, _ := json.Marshal(map[string]any{"version": 1, "deployments": recs})
	if err := os.WriteFile(filepath.Join(dir, deploy.StateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "deployments", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "installed") || !strings.Contains(lines[1], "https://dp1:8446") ||
		!strings.Contains(lines[2], "failed (removed)") || !strings.Contains(lines[2], " 7 ") || !strings.Contains(lines[2], "exit code 7; output: oops") {
		t.Fatalf("table:\n%s", out)
	}
	out, err = run(t, "deployments", "--dir", dir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got deploy.Record
	if err := json.Unmarshal([]byte(strings.Split(out, "\n")[1]), &got); err != nil || got.ID != "d2" || *got.ExitCode != 7 {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if out, err := run(t, "deployments", "--dir", t.TempDir()); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("no record: %v\n%s", err, out)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4GiB": 4 << 30, "512 MiB": 512 << 20, "10k": 10 << 10, "123": 123, "1T": 1 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "0", "4 GB?", "lots", "99999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) took it", in)
		}
	}
	_, err := run(t, "run", "--dir", t.TempDir(), "--cache-size", "lots")
	if err == nil || cliapp.ExitCode(err) != cliapp.ExitUsage || !strings.Contains(err.Error(), "--cache-size") {
		t.Fatalf("run --cache-size lots: %v", err)
	}
}

// `download NAME` on an enrolled device whose policy deploys NAME: the location is
// detected (the internet MP here), the DPs come from that MP's /v1/locate, the first DP
// serves bad bytes, the second completes; the files land in --output, nothing runs.
func TestDownloadByHand(t *testing.T) {
	s := catest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	t.Setenv("IBCM_CLIENT_TOKEN", s.Token(t, ca.TokenSpec{}))
	if out, err := run(t, "enroll", "--dir", dir, "--ca", s.URL, "--root-sha256", s.Pin, "--name", "pc-01"); err != nil {
		t.Fatalf("enroll: %v\n%s", err, out)
	}
	if _, err := client.Load(dir); err != nil {
		t.Fatal(err)
	}

	ran := filepath.Join(t.TempDir(), "ran")
	data := bytes.Repeat([]byte("0123456789abcdef"), 20000) // several chunks
	m := &wire.Manifest{Name: "tool", Version: "2.1", ChunkSize: manifest.MinChunkSize, Created: time.Now().Add(-time.Minute).UTC(),
		Install: &wire.InstallSpec{Command: "touch " + ran, Timeout: "10s"}}
	f := wire.ManifestFile{Path: "share/tool/data.bin", Size: int64(len(data)), Mode: 0o644, SHA256: manifest.Hash(data)}
	for off := 0; off < len(data); off += int(m.ChunkSize) {
		f.Chunks = append(f.Chunks, manifest.Hash(data[off:min(off+int(m.ChunkSize), len(data))]))
	}
	m.Files = []wire.ManifestFile{f}
	h := catest.Hierarchy() // a content signer the test hierarchy's issuing CA makes
	signed, pin := manifesttest.From(t, "TST", h.Issuing, h.IssuingKey).Signed(t, m)

	newDP := func(corrupt bool) (*httptest.Server, *atomic.Int64) {
		var hits atomic.Int64
		dp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/v1/manifests/tool/2.1":
				w.Write(signed)
			case "/v1/content/" + f.SHA256:
				hits.Add(1)
				b := bytes.Clone(data)
				if corrupt {
					b[len(b)-10] ^= 1
				}
				w.Header().Set("ETag", `"`+f.SHA256+`"`)
				http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
			default:
				http.NotFound(w, r)
			}
		}))
		dp.TLS = s.ServerTLS(t, "dp")
		dp.StartTLS()
		t.Cleanup(dp.Close)
		return dp, &hits
	}
	bad, badHits := newDP(true)
	good, _ := newDP(false)
	mp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/locate" {
			json.NewEncoder(w).Encode(wire.Locate{Location: wire.Internet, DPs: []string{bad.URL, good.URL}})
			return
		}
		http.NotFound(w, r)
	}))
	mp.TLS = s.ServerTLS(t, "mp")
	mp.StartTLS()
	t.Cleanup(mp.Close)

	policy := map[string]any{"etag": `"1"`, "policy": wire.Policy{Name: "p", Version: 1,
		Location:    wire.LocationSettings{InternetMPNames: []string{strings.TrimPrefix(mp.URL, "https://")}, SRVNames: []string{"_ibcm-mp._tcp"}},
		Deployments: []wire.Deployment{{ID: "d1", Package: "tool", Version: "2.1", ManifestSHA256: pin, Install: true}}}}
	b, _ := json.Marshal(policy)
	if err := os.WriteFile(filepath.Join(dir, agent.PolicyFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	// The site code comes with the bootstrap settings at enrollment; this CA sends none.
	st, _ := os.ReadFile(filepath.Join(dir, client.StateFile))
	var state map[string]any
	json.Unmarshal(st, &state)
	state["bootstrap"] = wire.Bootstrap{SiteCode: "TST"}
	st, _ = json.Marshal(state)
	os.WriteFile(filepath.Join(dir, client.StateFile), st, 0o600)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.1:9\n"), 0o600)

	outDir := filepath.Join(t.TempDir(), "out")
	out, err := run(t, "download", "tool", "--dir", dir, "--resolv-conf", resolv, "--output", outDir)
	if err != nil {
		t.Fatalf("download: %v\n%s", err, out)
	}
	if !strings.Contains(out, "tool 2.1: 1 files") || !strings.Contains(out, good.URL) || !strings.Contains(out, "not installed") {
		t.Errorf("output %q", out)
	}
	if got, err := os.ReadFile(filepath.Join(outDir, "share/tool/data.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the downloaded file: %v", err)
	}
	if badHits.Load() == 0 {
		t.Error("the first DP was never asked")
	}
	if _, err := os.Stat(ran); err == nil {
		t.Error("download ran the install command")
	}
	if _, err := os.Stat(outDir + ".partial"); err == nil {
		t.Error("the partial directory is left behind")
	}
	// Again into the same directory: refused, it is not empty.
	if _, err := run(t, "download", "tool", "--dir", dir, "--resolv-conf", resolv, "--output", outDir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("into a full directory: %v", err)
	}
	// A package the policy does not deploy: a usage error.
	_, err = run(t, "download", "other", "--dir", dir, "--resolv-conf", resolv, "--output", filepath.Join(t.TempDir(), "x"))
	if err == nil || cliapp.ExitCode(err) != cliapp.ExitUsage || !strings.Contains(err.Error(), "not deployed to this device") {
		t.Errorf("another package: %v", err)
	}
	_, err = run(t, "download", "tool", "--version", "9", "--dir", dir, "--resolv-conf", resolv)
	if err == nil || cliapp.ExitCode(err) != cliapp.ExitUsage {
		t.Errorf("another version: %v", err)
	}
}
