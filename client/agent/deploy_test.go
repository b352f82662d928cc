package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/manifest/manifesttest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The agent acts on the deployments of a fetched policy: DPs from GET /v1/locate on the
// current MP, the manifest verified against the enrolled roots and the site, download,
// install, status messages through the spool; a later policy fetch installs nothing again.
func TestAgentDeploysFromPolicy(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	id := enrolled(t, s, dir)
	count := filepath.Join(t.TempDir(), "count")
	script := []byte("#!/bin/sh\necho hello\n")
	m := &wire.Manifest{Name: "hello", Version: "1.0", ChunkSize: manifest.MinChunkSize, Created: time.Now().Add(-time.Minute).UTC(),
		Files:   []wire.ManifestFile{{Path: "bin/hello", Size: int64(len(script)), Mode: 0o755, SHA256: manifest.Hash(script), Chunks: []string{manifest.Hash(script)}}},
		Install: &wire.InstallSpec{Command: "./bin/hello > out && echo run >> " + count, Timeout: "30s"}}
	h := catest.Hierarchy() // a content signer the test hierarchy's issuing CA makes
	signed, pin := manifesttest.From(t, "TST", h.Issuing, h.IssuingKey).Signed(t, m)

	dp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/manifests/hello/1.0":
			w.Write(signed)
		case "/v1/content/" + m.Files[0].SHA256:
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(script))
		default:
			http.NotFound(w, r)
		}
	}))
	dp.TLS = s.ServerTLS(t, "dp")
	dp.StartTLS()
	t.Cleanup(dp.Close)

	var etag atomic.Int64
	etag.Store(1)
	mp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/policy":
			w.Header().Set("ETag", fmt.Sprintf(`"%d"`, etag.Load()))
			json.NewEncoder(w).Encode(wire.Policy{Name: "p", Version: int(etag.Load()),
				Deployments: []wire.Deployment{{ID: "dep1", Package: "hello", Version: "1.0", ManifestSHA256: pin, Install: true}}})
		case "/v1/locate":
			json.NewEncoder(w).Encode(wire.Locate{Location: wire.Intranet, DPs: []string{dp.URL}})
		default:
			http.NotFound(w, r)
		}
	}))
	mp.TLS = s.ServerTLS(t, "mp")
	mp.StartTLS()
	t.Cleanup(mp.Close)

	a, err := newAgent(t, dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a.remote.site = "TST" // as the CRL fetch learns it from the MP's certificate
	sess := &session{a: a, base: mp.URL, location: wire.Intranet, http: mpClient(id, "", nil)}
	a.setMP(sess, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.deploy.m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	if err := sess.fetchPolicy(ctx); err != nil {
		t.Fatal(err)
	}
	rec := waitDeployment(t, a, "dep1")
	if rec.State != wire.DeployInstalled || rec.DP != dp.URL {
		t.Fatalf("%+v", rec)
	}
	if b, err := os.ReadFile(filepath.Join(dir, deploy.PackagesDir, "hello", "1.0", "out")); err != nil || string(b) != "hello\n" {
		t.Fatalf("out: %q %v", b, err)
	}
	etag.Add(1) // a new policy with the same deployment
	if err := sess.fetchPolicy(ctx); err != nil {
		t.Fatal(err)
	}
	msgs, _ := a.spool.Peek(1000)
	var states []string
	for _, msg := range msgs {
		if msg.Component == wire.DeploymentComponent && msg.Fields[wire.FieldDeployment] == "dep1" {
			states = append(states, msg.Fields[wire.FieldDeployState])
		}
	}
	if !strings.HasSuffix(strings.Join(states, ","), "installing,installed") || strings.Count(strings.Join(states, ","), "installed") != 1 {
		t.Errorf("reported %v", states)
	}
	if b, _ := os.ReadFile(count); string(b) != "run\n" {
		t.Fatalf("installed %d times", strings.Count(string(b), "run"))
	}
}

func waitDeployment(t *testing.T, a *Agent, id string) deploy.Record {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range a.Deployments() {
			if r.ID == id && r.Final {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond) // polling the condition itself
	}
	t.Fatalf("deployment %s did not finish: %+v", id, a.Deployments())
	return deploy.Record{}
}
