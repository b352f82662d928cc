package site

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestInitMakesTheOriginDP: site init writes a dp section (origin, mode both by default,
// the flags' addresses) and issues the DP's site-server certificate: role dp, common name
// = the DP's id, key 0600.
func TestInitMakesTheOriginDP(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	o := initOptions(dir)
	o.DPIntranetAddr, o.DPMode = "127.0.0.1:18446", "intranet"
	cfg, err := Init(context.Background(), o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	d := loaded.DP
	if d == nil || !d.Origin || d.ID != "dp1" || d.Mode != "intranet" || d.IntranetListen != "127.0.0.1:18446" ||
		d.SiteCode != "TST" || d.MPURL != cfg.MP.IntranetURL || d.Library != "content" {
		t.Fatalf("dp section: %+v", d)
	}
	var roles []string
	for _, l := range loaded.Listeners() {
		roles = append(roles, l.Role)
	}
	if strings.Join(roles, ",") != "ca,ca-public,mp-intranet,mp-internet,console,dp-intranet" {
		t.Errorf("listeners: %v", roles)
	}
	pair, err := tls.LoadX509KeyPair(cfg.Path(d.TLSCert), cfg.Path(d.TLSKey))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if id := wire.Identify(leaf); leaf.Subject.CommonName != "dp1" || id.Kind != wire.KindServer || id.ID != "dp" || id.Site != "TST" {
		t.Errorf("DP certificate: CN %q, identity %+v", leaf.Subject.CommonName, id)
	}
	if st, err := os.Stat(cfg.Path(d.TLSKey)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("DP key: %v %v", st, err)
	}

	// Defaults of the flags: both listeners, on 8446 and 8447.
	cfg2, err := Init(context.Background(), initOptions(filepath.Join(t.TempDir(), "site")), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg2.DP; d.Mode != "both" || d.IntranetListen != "127.0.0.1:8446" || d.InternetListen != "127.0.0.1:8447" {
		t.Errorf("default DP: %+v", d)
	}
}

// TestSiteWithoutDPKeepsWorking: a site.yaml made before DPs (no dp section) loads, lists
// no DP listener, and runs with one log line saying how to add one.
func TestSiteWithoutDPKeepsWorking(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	o := initOptions(dir)
	o.CAAddr, o.CAPublicAddr, o.MPIntranetAddr, o.MPInternetAddr = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	o.ConsoleAddr = freeAddr(t)
	if _, err := Init(context.Background(), o, io.Discard); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	raw, _ := os.ReadFile(path)
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	delete(doc, "dp")
	raw, _ = yaml.Marshal(doc)
	os.WriteFile(path, raw, 0o600)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DP != nil || len(cfg.Listeners()) != 5 { // ca, ca-public, mp-intranet, mp-internet, console
		t.Fatalf("an old site: dp %v, %d listeners", cfg.DP, len(cfg.Listeners()))
	}
	var logBuf syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 8)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, lineWriter(ready), zerolog.New(&logBuf)) }()
	for seen := 0; seen < 5; {
		select {
		case line := <-ready:
			if strings.Contains(line, "dp-") {
				t.Errorf("a DP listener on a site without one: %s", line)
			}
			seen++
		case err := <-done:
			t.Fatalf("Run: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("listeners not ready")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logBuf.String(), "no distribution point"); n != 1 {
		t.Fatalf("%d log lines about the missing DP:\n%s", n, logBuf.String())
	}
}

// TestRunServesTheDP: site up opens the DP's listeners after the MP's; they answer
// /healthz over mutual TLS; the DP registers with the MP over loopback, takes the feed (it
// serves once it has the snapshot), and takes an upload from the first admin (the MP says
// they hold ManageContent); the MP lists it online, origin, with its URLs.
func TestRunServesTheDP(t *testing.T) {
	cfg, _ := runSite(t)
	hs, err := Status(context.Background(), cfg, RoleDP)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 2 {
		t.Fatalf("DP listeners: %+v", hs)
	}
	for _, h := range hs {
		if !h.Healthy {
			t.Errorf("%s: %s", h.Role, h.Error)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: adminTLS(t, cfg)}}
	data := []byte("uploaded through site up")
	h := sha256.Sum256(data)
	sum := hex.EncodeToString(h[:])
	content := cfg.DP.IntranetURL + "/v1/content/" + sum
	// The DP answers 503 until the MP's feed gave it a snapshot: poll for that state.
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(content)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("the DP answers %d; it did not get the MP's snapshot", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/admin/uploads/%s?offset=0&size=%d", cfg.DP.IntranetURL, sum, len(data)), bytes.NewReader(data))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	resp, err = client.Get(content)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, data) {
		t.Fatalf("the uploaded blob: %d %q", resp.StatusCode, got)
	}
	resp, err = client.Get(cfg.MP.IntranetURL + "/v1/admin/dps")
	if err != nil {
		t.Fatal(err)
	}
	var dps []wire.DPInfo
	err = json.NewDecoder(resp.Body).Decode(&dps)
	resp.Body.Close()
	if err != nil || len(dps) != 1 || dps[0].ID != "dp1" || !dps[0].Origin || !dps[0].Online || dps[0].IntranetURL != cfg.DP.IntranetURL || dps[0].InternetURL != cfg.DP.InternetURL {
		t.Fatalf("the MP lists %+v (%v)", dps, err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
