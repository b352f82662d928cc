package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// TestDPList: ibcm dp list asks the MP's GET /v1/admin/dps with the admin's certificate
// and prints each DP's state per package (pending, n %, ready, failed + why), or JSON.
func TestDPList(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	addr := func() string {
		a, err := freeport.Addr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	cfg, err := site.Init(context.Background(), site.InitOptions{Dir: dir, SiteCode: "CLI", IntranetName: "ibcm.corp.test", InternetName: "ibcm.example.test",
		CAAddr: addr(), CAPublicAddr: addr(), MPIntranetAddr: addr(), MPInternetAddr: addr()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	seen := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	dps := []wire.DPInfo{
		{ID: "dp1", Mode: "both", IntranetURL: "https://dp1.corp.test:8446", InternetURL: "https://dp1.example.test:8447", Priority: 0, Origin: true, Online: true, LastSeen: seen,
			Packages: []wire.DPPackageState{{Name: "tool", Version: "1.0", State: wire.DPReady, Percent: 100}}},
		{ID: "dp2", Mode: "intranet", IntranetURL: "https://dp2.corp.test:8446", Priority: 10, LastSeen: seen,
			Packages: []wire.DPPackageState{
				{Name: "tool", Version: "1.0", State: wire.DPSyncing, Percent: 42},
				{Name: "big", Version: "2", State: wire.DPFailed, Error: "no source has blob 0a1b"},
				{Name: "new", Version: "3", State: wire.DPPending},
			}},
		{ID: "dp3", Mode: "internet", InternetURL: "https://dp3.example.test:8447"},
	}
	var asked *x509.Certificate
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/admin/dps" {
			http.NotFound(w, r)
			return
		}
		asked = r.TLS.PeerCertificates[0]
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(dps)
	}))
	pair, err := tls.LoadX509KeyPair(cfg.Path(cfg.MP.TLSCert), cfg.Path(cfg.MP.TLSKey))
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	defer srv.Close()
	mpURL := srv.URL // the MP's certificate names 127.0.0.1, the host of its URLs
	out := mustIBCM(t, "dp", "list", "--dir", dir, "--mp", mpURL)
	if asked == nil || asked.Subject.CommonName != "admin" {
		t.Fatalf("the MP was asked with %v", asked)
	}
	for _, want := range []string{
		"ID   MODE      PRIORITY  ORIGIN  ONLINE  LAST SEEN",
		"dp1  both      0         yes     yes     2026-12-07T10:00:00Z  https://dp1.corp.test:8446 https://dp1.example.test:8447  tool 1.0  ready",
		"tool 1.0  42 %",
		"big 2     failed: no source has blob 0a1b",
		"new 3     pending",
		"dp3  internet  0         no      no      -                     https://dp3.example.test:8447                             -         -",
	} {
		if !strings.Contains(out, want) && !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("dp list lacks %q:\n%s", want, out)
		}
	}
	var got []wire.DPInfo
	if err := json.Unmarshal([]byte(mustIBCM(t, "dp", "list", "--json", "--dir", dir, "--mp", mpURL)), &got); err != nil || len(got) != 3 || got[1].Packages[0].Percent != 42 {
		t.Fatalf("dp list --json: %v %+v", err, got)
	}
}

// TestDPServeRefusesABadConfig: a file that does not validate is a usage error (exit 2)
// naming the key; no --config at all too.
func TestDPServeRefusesABadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dp.yaml")
	os.WriteFile(path, []byte("version: 1\ndp:\n  id: dp2\n  mode: nowhere\n"), 0o600)
	for _, args := range [][]string{{"dp", "serve", "--config", path}, {"dp", "serve"}} {
		app := newApp()
		var out bytes.Buffer
		app.Writer, app.ErrWriter = &out, &out
		err := cliapp.Run(context.Background(), app, append([]string{"ibcm"}, args...))
		if err == nil || exitCode(err) != exitUsage {
			t.Fatalf("%v: err %v (exit %d)", args, err, exitCode(err))
		}
		if len(args) == 4 && !strings.Contains(err.Error(), "dp.mode: must be intranet, internet or both") {
			t.Errorf("the error does not name the key: %v", err)
		}
	}
}
