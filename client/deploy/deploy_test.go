package deploy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/manifest/manifesttest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

const site = "TST"

// testCA is the site's root with its content signer (manifesttest); it also issues the
// TLS certificates of the fake DPs and of the device.
type testCA struct{ *manifesttest.CA }

func newCA(t *testing.T) *testCA { return &testCA{manifesttest.New(t, site)} }

var serial int64 = 100

func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate) (*x509.Certificate, crypto.Signer) {
	k := manifesttest.NewKey(t)
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Root, k.Public(), ca.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, k
}

func (ca *testCA) tlsCert(t *testing.T, server bool) tls.Certificate {
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "dp1"}, KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	c, k := ca.issue(t, tmpl)
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

// pkg is a package: its files' contents and the signed manifest.
type pkg struct {
	m      *wire.Manifest
	signed []byte
	pin    string
	blobs  map[string][]byte
}

func makePkg(t *testing.T, ca *testCA, name, version string, files map[string]string, install *wire.InstallSpec) *pkg {
	m := &wire.Manifest{Name: name, Version: version, ChunkSize: manifest.MinChunkSize, Install: install, Created: time.Now().Add(-time.Minute).UTC()}
	p := &pkg{blobs: map[string][]byte{}}
	for path, content := range files {
		b := []byte(content)
		f := wire.ManifestFile{Path: path, Size: int64(len(b)), Mode: 0o644, SHA256: manifest.Hash(b)}
		for off := 0; off < len(b); off += int(m.ChunkSize) {
			f.Chunks = append(f.Chunks, manifest.Hash(b[off:min(off+int(m.ChunkSize), len(b))]))
		}
		if strings.HasSuffix(path, ".sh") {
			f.Mode = 0o755
		}
		m.Files = append(m.Files, f)
		p.blobs[f.SHA256] = b
	}
	p.signed, p.pin = ca.Signed(t, m)
	p.m = m
	return p
}

// fakeDP serves manifests and blobs over mutual TLS; corrupt flips a byte of every blob.
type fakeDP struct {
	srv     *httptest.Server
	mu      sync.Mutex
	pkgs    map[string]*pkg
	corrupt bool
	stall   bool // send half the bytes, then nothing
	hits    int
}

func newDP(t *testing.T, ca *testCA, pkgs ...*pkg) *fakeDP {
	d := &fakeDP{pkgs: map[string]*pkg{}}
	for _, p := range pkgs {
		d.pkgs[p.m.Name+"/"+p.m.Version] = p
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/manifests/{name}/{version}", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		p := d.pkgs[r.PathValue("name")+"/"+r.PathValue("version")]
		d.mu.Unlock()
		if p == nil {
			http.Error(w, `{"error":{"code":"not_found","message":"no such package"}}`, http.StatusNotFound)
			return
		}
		w.Write(p.signed)
	})
	mux.HandleFunc("GET /v1/content/{sum}", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.hits++
		var b []byte
		for _, p := range d.pkgs {
			if x, ok := p.blobs[r.PathValue("sum")]; ok {
				b = bytes.Clone(x)
			}
		}
		corrupt := d.corrupt
		d.mu.Unlock()
		if b == nil {
			http.NotFound(w, r)
			return
		}
		if corrupt && len(b) > 0 {
			b[len(b)/2] ^= 0xff
		}
		if d.stall {
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		w.Header().Set("ETag", `"`+r.PathValue("sum")+`"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	})
	d.srv = httptest.NewUnstartedServer(mux)
	d.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.tlsCert(t, true)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool}
	d.srv.StartTLS()
	t.Cleanup(d.srv.Close)
	return d
}

// env is a device: a state directory, a client certificate, a manager and its reports.
type env struct {
	t       *testing.T
	ca      *testCA
	dir     string
	client  *http.Client
	dps     []string
	reports chan Record
	mu      sync.Mutex
	all     []map[string]string
}

func newEnv(t *testing.T, ca *testCA, dps ...*fakeDP) *env {
	e := &env{t: t, ca: ca, dir: t.TempDir(), reports: make(chan Record, 1000)}
	e.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{ca.tlsCert(t, false)}, RootCAs: ca.Pool}}}
	for _, d := range dps {
		e.dps = append(e.dps, d.srv.URL)
	}
	return e
}

func (e *env) manager(mod func(*Config)) (*Manager, context.CancelFunc) {
	c := Config{Dir: e.dir, Client: func() *http.Client { return e.client },
		Locate: func(context.Context) ([]string, error) { return e.dps, nil },
		Trust:  func() manifest.Trust { return e.ca.Trust() },
		Report: func(sev, text string, f map[string]string) {
			e.mu.Lock()
			e.all = append(e.all, f)
			e.mu.Unlock()
			e.reports <- Record{ID: f[wire.FieldDeployment], State: f[wire.FieldDeployState], Error: f[wire.FieldError], DP: f[wire.FieldDP]}
		},
		RetryBase: 10 * time.Millisecond, StallTimeout: 5 * time.Second}
	if mod != nil {
		mod(&c)
	}
	m, err := New(c)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	e.t.Cleanup(stop)
	return m, stop
}

// await waits for a report of id in one of the final states and returns the record.
func (e *env) await(m *Manager, id string) Record {
	e.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		for _, x := range m.Records() {
			if x.ID == id && x.Final && e.reported(id, x.State) {
				return x
			}
		}
		select {
		case <-e.reports: // something changed: look again
		case <-timeout:
			e.t.Fatalf("deployment %s never finished: %+v", id, m.Records())
		}
	}
}

// reported tells whether a status message said id reached state.
func (e *env) reported(id, state string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range e.all {
		if f[wire.FieldDeployment] == id && f[wire.FieldDeployState] == state {
			return true
		}
	}
	return false
}

func deployment(id string, p *pkg, install bool) wire.Deployment {
	return wire.Deployment{ID: id, Package: p.m.Name, Version: p.m.Version, ManifestSHA256: p.pin, Install: install}
}

func TestDeployDownloadsVerifiesInstallsOnce(t *testing.T) {
	ca := newCA(t)
	count := filepath.Join(t.TempDir(), "count")
	p := makePkg(t, ca, "tool", "1.0", map[string]string{"bin/tool.sh": "#!/bin/sh\necho tool\n", "etc/tool.conf": strings.Repeat("x", 200000)},
		&wire.InstallSpec{Command: "./bin/tool.sh > out.txt && echo run >> " + count, Timeout: "10s"})
	dp := newDP(t, ca, p)
	e := newEnv(t, ca, dp)
	m, stop := e.manager(nil)
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	r := e.await(m, "d1")
	if r.State != wire.DeployInstalled || r.ExitCode == nil || *r.ExitCode != 0 || r.DP != dp.srv.URL {
		t.Fatalf("record %+v", r)
	}
	dir := filepath.Join(e.dir, PackagesDir, "tool", "1.0")
	if b, err := os.ReadFile(filepath.Join(dir, "out.txt")); err != nil || string(b) != "tool\n" {
		t.Fatalf("out.txt: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "bin/tool.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("tool.sh mode: %v %v", fi, err)
	}
	var states []string
	e.mu.Lock()
	for _, f := range e.all {
		if len(states) == 0 || states[len(states)-1] != f[wire.FieldDeployState] {
			states = append(states, f[wire.FieldDeployState])
		}
	}
	e.mu.Unlock()
	if got := strings.Join(states, ","); got != "pending,downloading,downloaded,installing,installed" {
		t.Errorf("reported states %s", got)
	}
	fi, err := os.Stat(filepath.Join(e.dir, StateFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi, err)
	}

	// The same policy again, and a restart with it: nothing runs again.
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	stop()
	m2, _ := e.manager(nil)
	m2.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	m2.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	// a second deployment of the same signed bytes is installed already
	m2.SetPolicy([]wire.Deployment{deployment("d1", p, true), deployment("d2", p, true)})
	if r := e.await(m2, "d2"); r.State != wire.DeployInstalled {
		t.Fatalf("d2 %+v", r)
	}
	if b, _ := os.ReadFile(count); string(b) != "run\n" {
		t.Fatalf("the install command ran %d times", strings.Count(string(b), "run"))
	}
	recs, err := ReadState(e.dir)
	if err != nil || len(recs) != 2 || recs[0].State != wire.DeployInstalled {
		t.Fatalf("ReadState: %+v %v", recs, err)
	}
}

func TestDeployRefusesForeignOrUnpinnedManifest(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	ran := filepath.Join(t.TempDir(), "ran")
	spec := &wire.InstallSpec{Command: "touch " + ran, Timeout: "10s"}
	good := makePkg(t, ca, "app", "1", map[string]string{"a": "a"}, spec)
	foreign := makePkg(t, other, "app", "2", map[string]string{"a": "a"}, spec)
	older := makePkg(t, ca, "app", "3", map[string]string{"a": "old"}, spec)
	dp := newDP(t, ca, good, foreign, older)
	e := newEnv(t, ca, dp)
	m, _ := e.manager(nil)
	pinned := deployment("d-pin", older, true)
	pinned.ManifestSHA256 = good.pin // the policy pins other bytes than the DP serves
	m.SetPolicy([]wire.Deployment{deployment("d-foreign", foreign, true), pinned})
	for id, want := range map[string]error{"d-foreign": manifest.ErrSigner, "d-pin": manifest.ErrPinned} {
		r := e.await(m, id)
		if r.State != wire.DeployFailed || !strings.Contains(r.Error, want.Error()) || r.Attempts != DefaultAttempts {
			t.Errorf("%s: %+v", id, r)
		}
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the install command ran")
	}
	if dp.hits != 0 {
		t.Fatalf("%d blob requests for refused manifests", dp.hits)
	}
}

func TestDeployBadDPThenNextCompletes(t *testing.T) {
	ca := newCA(t)
	p := makePkg(t, ca, "big", "1", map[string]string{"data": strings.Repeat("0123456789", 30000)}, &wire.InstallSpec{Command: "cmp -s data data", Timeout: "10s"})
	bad, good := newDP(t, ca, p), newDP(t, ca, p)
	bad.corrupt = true
	e := newEnv(t, ca, bad, good)
	m, _ := e.manager(nil)
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	r := e.await(m, "d1")
	if r.State != wire.DeployInstalled || r.DP != good.srv.URL || bad.hits == 0 {
		t.Fatalf("%+v (bad DP hits %d)", r, bad.hits)
	}
}

func TestDeployPackageLargerThanCache(t *testing.T) {
	ca := newCA(t)
	ran := filepath.Join(t.TempDir(), "ran")
	p := makePkg(t, ca, "huge", "1", map[string]string{"data": strings.Repeat("x", 100000)}, &wire.InstallSpec{Command: "touch " + ran, Timeout: "10s"})
	dp := newDP(t, ca, p)
	e := newEnv(t, ca, dp)
	m, _ := e.manager(func(c *Config) { c.CacheSize = 50000 })
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	r := e.await(m, "d1")
	if r.State != wire.DeployFailed || !strings.Contains(r.Error, "larger than the cache") || r.Attempts != 1 {
		t.Fatalf("%+v", r)
	}
	if _, err := os.Stat(ran); err == nil || dp.hits != 0 {
		t.Fatal("downloaded or ran")
	}
}

func TestDeployEvictsLeastRecentlyUsed(t *testing.T) {
	ca := newCA(t)
	a := makePkg(t, ca, "a", "1", map[string]string{"f": strings.Repeat("a", 40000)}, nil)
	b := makePkg(t, ca, "b", "1", map[string]string{"f": strings.Repeat("b", 40000)}, nil)
	dp := newDP(t, ca, a, b)
	e := newEnv(t, ca, dp)
	m, _ := e.manager(func(c *Config) { c.CacheSize = 60000 })
	m.SetPolicy([]wire.Deployment{deployment("da", a, false)})
	if r := e.await(m, "da"); r.State != wire.DeployDownloaded {
		t.Fatalf("%+v", r)
	}
	m.SetPolicy([]wire.Deployment{deployment("da", a, false), deployment("db", b, false)})
	if r := e.await(m, "db"); r.State != wire.DeployDownloaded {
		t.Fatalf("%+v", r)
	}
	cache := filepath.Join(e.dir, CacheDir)
	if _, err := os.Stat(BlobPath(cache, a.m.Files[0].SHA256)); err == nil {
		t.Error("a's blob was not evicted")
	}
	if _, err := os.Stat(BlobPath(cache, b.m.Files[0].SHA256)); err != nil {
		t.Error(err)
	}
}

func TestDeployInstallTimeoutKillsTheGroup(t *testing.T) {
	ca := newCA(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	p := makePkg(t, ca, "slow", "1", map[string]string{"f": "x"},
		&wire.InstallSpec{Command: "sleep 60 & echo $! > " + pidFile + "; wait", Timeout: "300ms"})
	e := newEnv(t, ca, newDP(t, ca, p))
	m, _ := e.manager(func(c *Config) { c.Attempts = 1 })
	start := time.Now()
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	r := e.await(m, "d1")
	if r.State != wire.DeployFailed || !strings.Contains(r.Error, "timed out") || r.ExitCode == nil || *r.ExitCode != -1 {
		t.Fatalf("%+v", r)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	if _, err := os.Stat("/proc/" + pid); err == nil {
		st, _ := os.ReadFile("/proc/" + pid + "/stat")
		if !strings.Contains(string(st), ") Z ") {
			t.Fatalf("the installer's child %s still runs", pid)
		}
	}
}

func TestDeployFailingCommandRetriedThenFailed(t *testing.T) {
	ca := newCA(t)
	count := filepath.Join(t.TempDir(), "count")
	p := makePkg(t, ca, "bad", "1", map[string]string{"f": "x"},
		&wire.InstallSpec{Command: "echo run >> " + count + "; echo oops >&2; exit 7", Timeout: "10s", SuccessCodes: []int{0, 3}})
	e := newEnv(t, ca, newDP(t, ca, p))
	m, _ := e.manager(nil)
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	r := e.await(m, "d1")
	if r.State != wire.DeployFailed || r.ExitCode == nil || *r.ExitCode != 7 || !strings.Contains(r.Error, "oops") {
		t.Fatalf("%+v", r)
	}
	if b, _ := os.ReadFile(count); strings.Count(string(b), "run") != DefaultAttempts {
		t.Fatalf("ran %d times", strings.Count(string(b), "run"))
	}
	e.mu.Lock()
	last := e.all[len(e.all)-1]
	e.mu.Unlock()
	if last[wire.FieldExitCode] != "7" || last[wire.FieldDeployState] != wire.DeployFailed {
		t.Fatalf("last report %v", last)
	}
}

func TestDeployRemovedFromPolicyStops(t *testing.T) {
	ca := newCA(t)
	started := filepath.Join(t.TempDir(), "started")
	p := makePkg(t, ca, "long", "1", map[string]string{"f": "x"},
		&wire.InstallSpec{Command: "touch " + started + "; sleep 60", Timeout: "2m"})
	e := newEnv(t, ca, newDP(t, ca, p))
	m, _ := e.manager(nil)
	m.SetPolicy([]wire.Deployment{deployment("d1", p, true)})
	for r := range e.reports {
		if r.State == wire.DeployInstalling {
			break
		}
	}
	m.SetPolicy(nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		running := m.running
		m.mu.Unlock()
		if running == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still running")
		}
		time.Sleep(20 * time.Millisecond)
	}
	recs := m.Records()
	if len(recs) != 1 || recs[0].InPolicy || recs[0].Final || !strings.Contains(recs[0].Error, "no longer in the policy") {
		t.Fatalf("%+v", recs)
	}
}

// A symlink planted in the package directory does not redirect a write, and a planted
// packages/<name> link is replaced by a directory.
func TestPlaceDoesNotFollowSymlinks(t *testing.T) {
	ca := newCA(t)
	p := makePkg(t, ca, "x", "1", map[string]string{"sub/f": "payload", "g": "g"}, nil)
	cache := t.TempDir()
	for sum, b := range p.blobs {
		os.MkdirAll(filepath.Dir(BlobPath(cache, sum)), 0o700)
		os.WriteFile(BlobPath(cache, sum), b, 0o600)
	}
	blob := func(s string) string { return BlobPath(cache, s) }
	outside := t.TempDir()
	// a directory link
	dir := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	if err := Place(dir, p.m, blob); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Place through a directory link: %v", err)
	}
	// a file link
	dir = t.TempDir()
	os.Symlink(filepath.Join(outside, "g"), filepath.Join(dir, "g"))
	if err := Place(dir, p.m, blob); err == nil {
		t.Fatal("Place over a file link worked")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("written outside: %v", ents)
	}
	// packages/x planted as a link to outside
	state := t.TempDir()
	os.Mkdir(filepath.Join(state, PackagesDir), 0o755)
	os.MkdirAll(filepath.Join(outside, "1"), 0o755)
	os.WriteFile(filepath.Join(outside, "1", "keep"), []byte("k"), 0o644)
	os.Symlink(outside, filepath.Join(state, PackagesDir, "x"))
	pd, err := PackageDir(state, "x", "1")
	if err != nil {
		t.Fatal(err)
	}
	if err := Place(pd, p.m, blob); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "1", "keep")); err != nil {
		t.Fatal("PackageDir removed a file through a planted link")
	}
	if b, err := os.ReadFile(filepath.Join(state, PackagesDir, "x", "1", "sub", "f")); err != nil || string(b) != "payload" {
		t.Fatalf("%q %v", b, err)
	}
	// and a manifest path that leaves the directory (only if Check were bypassed)
	evil := *p.m
	evil.Files = []wire.ManifestFile{p.m.Files[0]}
	evil.Files[0].Path = "../escape"
	if err := Place(t.TempDir(), &evil, blob); err == nil {
		t.Fatal("a path leaving the directory was written")
	}
	// a corrupted cached blob is refused and removed
	for sum := range p.blobs {
		os.WriteFile(BlobPath(cache, sum), []byte("tampered"), 0o600)
	}
	if err := Place(t.TempDir(), p.m, blob); !errors.Is(err, ErrCorruptBlob) {
		t.Fatalf("corrupt blob: %v", err)
	}
}

// No MP to name the DPs yet: the deployment waits without spending an attempt, and goes
// on at Wake (the agent's new MP session).
func TestDeployWaitsForAnMP(t *testing.T) {
	ca := newCA(t)
	p := makePkg(t, ca, "w", "1", map[string]string{"f": "x"}, nil)
	e := newEnv(t, ca, newDP(t, ca, p))
	var up atomic.Bool
	asked := make(chan struct{}, 10)
	m, _ := e.manager(func(c *Config) {
		c.Attempts = 1
		locate := c.Locate
		c.Locate = func(ctx context.Context) ([]string, error) {
			defer func() { asked <- struct{}{} }()
			if !up.Load() {
				return nil, ErrUnavailable
			}
			return locate(ctx)
		}
	})
	m.SetPolicy([]wire.Deployment{deployment("d1", p, false)})
	<-asked // (an unavailable answer changes no record, however many there are)
	if r := m.Records()[0]; r.Final || r.Attempts != 0 || r.State != wire.DeployPending {
		t.Fatalf("%+v", r)
	}
	up.Store(true)
	m.Wake()
	if r := e.await(m, "d1"); r.State != wire.DeployDownloaded {
		t.Fatalf("%+v", r)
	}
}

// A DP that stops sending is abandoned after the stall timeout; the next one completes.
func TestDeployStalledDPThenNext(t *testing.T) {
	ca := newCA(t)
	p := makePkg(t, ca, "s", "1", map[string]string{"data": strings.Repeat("s", 300000)}, nil)
	stalled, good := newDP(t, ca, p), newDP(t, ca, p)
	stalled.stall = true
	e := newEnv(t, ca, stalled, good)
	m, _ := e.manager(func(c *Config) { c.StallTimeout = 300 * time.Millisecond; c.Attempts = 1 })
	m.SetPolicy([]wire.Deployment{deployment("d1", p, false)})
	r := e.await(m, "d1")
	if r.State != wire.DeployDownloaded || r.DP != good.srv.URL || stalled.hits == 0 {
		t.Fatalf("%+v", r)
	}
}

// A package directory lives as long as a deployment of the policy names it: a new version
// replaces the old one, a removed deployment's directory goes, a directory of a deployment
// still in the policy stays, and a link planted in a removed directory is not followed.
func TestDeployPackageDirsFollowThePolicy(t *testing.T) {
	ca := newCA(t)
	a1 := makePkg(t, ca, "a", "1", map[string]string{"f": "a1"}, nil)
	a2 := makePkg(t, ca, "a", "2", map[string]string{"f": "a2"}, nil)
	b1 := makePkg(t, ca, "b", "1", map[string]string{"f": "b1"}, &wire.InstallSpec{Command: "true", Timeout: "10s"})
	c1 := makePkg(t, ca, "c", "1", map[string]string{"f": "c1"}, nil)
	e := newEnv(t, ca, newDP(t, ca, a1, a2, b1, c1))
	pkgDir := func(name, version string) string { return filepath.Join(e.dir, PackagesDir, name, version) }
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	// a directory left by an earlier deployment the policy no longer names
	if err := os.MkdirAll(pkgDir("old", "0.9"), 0o755); err != nil {
		t.Fatal(err)
	}
	m, _ := e.manager(nil)
	m.SetPolicy([]wire.Deployment{deployment("da1", a1, false), deployment("db1", b1, true)})
	e.await(m, "da1")
	e.await(m, "db1")
	if !exists(pkgDir("a", "1")) || !exists(pkgDir("b", "1")) || exists(filepath.Join(e.dir, PackagesDir, "old")) {
		t.Fatalf("after the first policy: a/1 %v, b/1 %v, old %v", exists(pkgDir("a", "1")), exists(pkgDir("b", "1")), exists(filepath.Join(e.dir, PackagesDir, "old")))
	}
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(pkgDir("a", "1"), "link")); err != nil {
		t.Fatal(err)
	}

	// a new version of a replaces the old one; b stays in the policy and keeps its directory
	m.SetPolicy([]wire.Deployment{deployment("da2", a2, false), deployment("db1", b1, true)})
	e.await(m, "da2")
	if exists(pkgDir("a", "1")) || !exists(pkgDir("a", "2")) || !exists(pkgDir("b", "1")) {
		t.Fatalf("after a new version: a/1 %v, a/2 %v, b/1 %v", exists(pkgDir("a", "1")), exists(pkgDir("a", "2")), exists(pkgDir("b", "1")))
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "k" {
		t.Fatalf("the link planted in a/1 was followed: %q %v", b, err)
	}

	// b leaves the policy (installed or not, its directory goes); c arrives
	m.SetPolicy([]wire.Deployment{deployment("da2", a2, false), deployment("dc1", c1, false)})
	e.await(m, "dc1")
	if exists(filepath.Join(e.dir, PackagesDir, "b")) || !exists(pkgDir("a", "2")) || !exists(pkgDir("c", "1")) {
		t.Fatalf("after removing b: b %v, a/2 %v, c/1 %v", exists(filepath.Join(e.dir, PackagesDir, "b")), exists(pkgDir("a", "2")), exists(pkgDir("c", "1")))
	}
}

// prunePackages removes links themselves, never what they point to, and does not look
// into a kept name that is a link.
func TestPrunePackagesDoesNotFollowSymlinks(t *testing.T) {
	state := t.TempDir()
	pk := filepath.Join(state, PackagesDir)
	outside := t.TempDir()
	for _, d := range []string{"1", "2", "x/9"} {
		if err := os.MkdirAll(filepath.Join(outside, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(outside, d, "keep"), []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"kept/1", "kept/3/sub", "gone/1"} {
		if err := os.MkdirAll(filepath.Join(pk, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"kept/1/in":       outside,                        // inside a kept directory: left alone
		"kept/2":          filepath.Join(outside, "2"),    // a version that is a link: the link goes
		"kept/3/sub/deep": filepath.Join(outside, "1"),    // deep in a removed version
		"gone/1/l":        outside,                        // in a removed name
		"linked":          filepath.Join(outside, "x"),    // a name that is a link
		"kept2":           filepath.Join(outside, "x"),    // a kept name that is a link: not looked into
		"kept/4":          filepath.Join(state, "victim"), // a link to elsewhere in the state directory
	}
	if err := os.Mkdir(filepath.Join(state, "victim"), 0o755); err != nil {
		t.Fatal(err)
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(pk, l)); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := prunePackages(state, map[string]bool{"kept/1": true, "kept2/9": true})
	if err != nil {
		t.Fatal(err)
	}
	want := "packages/gone packages/kept/2 packages/kept/3 packages/kept/4 packages/linked"
	if got := strings.Join(removed, " "); got != want {
		t.Fatalf("removed %q, want %q", got, want)
	}
	for _, d := range []string{"1", "2", "x/9"} {
		if _, err := os.Stat(filepath.Join(outside, d, "keep")); err != nil {
			t.Fatalf("a link was followed: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "victim")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"kept/1/in", "kept2"} {
		if fi, err := os.Lstat(filepath.Join(pk, p)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("%s: %v %v", p, fi, err)
		}
	}
	// packages itself a link: nothing is looked into
	state2 := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(state2, PackagesDir)); err != nil {
		t.Fatal(err)
	}
	if removed, err := prunePackages(state2, nil); err != nil || len(removed) != 0 {
		t.Fatalf("%v %v", removed, err)
	}
	if _, err := os.Stat(filepath.Join(outside, "1", "keep")); err != nil {
		t.Fatal(err)
	}
}
