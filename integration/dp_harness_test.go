package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Fixtures of the distribution point tests (dp_test.go): DPs run by `ibcm dp serve`, a TCP
// proxy the test controls in front of a DP, test packages, curl against a DP, and the
// admin's views of DPs and deployments.

// dpRoles are the ready lines a server command prints for its DP listeners: those of the dp
// section of the configuration it serves (DIR/site.yaml for `site up`, --config for `dp
// serve`), by its mode. A configuration without a dp section has none.
func dpRoles(t *testing.T, args []string) []string {
	t.Helper()
	cmd := args[0] + " " + args[1]
	if cmd != "site up" && cmd != "dp serve" {
		return nil
	}
	var file string
	for i := 2; i+1 < len(args); i++ {
		switch args[i] {
		case "--dir":
			file = filepath.Join(args[i+1], "site.yaml")
		case "--config":
			file = args[i+1]
		}
	}
	if file == "" {
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		DP *struct {
			Mode string `yaml:"mode"`
		} `yaml:"dp"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	switch {
	case cfg.DP == nil:
		return nil
	case cfg.DP.Mode == wire.DPModeBoth:
		return []string{"dp-intranet", "dp-internet"}
	case cfg.DP.Mode == wire.DPModeInternet:
		return []string{"dp-internet"}
	}
	return []string{"dp-intranet"} // the default mode

}

// dpListen is where the site's DP listens, as site init wrote it into site.yaml.
func (s *testSite) dpListen(t *testing.T) (intranet, internet string) {
	t.Helper()
	b, err := os.ReadFile(s.path("site.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		DP struct {
			IntranetListen string `yaml:"intranet_listen"`
			InternetListen string `yaml:"internet_listen"`
		} `yaml:"dp"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil || cfg.DP.IntranetListen == "" || cfg.DP.InternetListen == "" {
		t.Fatalf("site.yaml: no dp listeners (%v)", err)
	}
	return cfg.DP.IntranetListen, cfg.DP.InternetListen
}

// tcpProxy is a TCP forwarder the test puts between clients and a DP (TLS passes through
// it untouched): it counts the bytes the DP sent through it and, each time that count
// crosses one of its cut points, cuts every open connection.
type tcpProxy struct {
	URL    string // https://<its address>
	target string
	ln     net.Listener
	sent   atomic.Int64 // bytes from the target to the clients

	mu    sync.Mutex
	conns map[net.Conn]bool
	cutAt []int64 // cut points still ahead, ascending
	cuts  int
}

// startProxy forwards connections on a free loopback port to target (host:port) until the
// test ends; it cuts every open connection when the bytes sent by target reach each of cutAt.
func startProxy(t *testing.T, target string, cutAt ...int64) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{URL: "https://" + ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}, cutAt: cutAt}
	sort.Slice(p.cutAt, func(i, j int) bool { return p.cutAt[i] < p.cutAt[j] })
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *tcpProxy) forward(client net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	p.conns[client], p.conns[up] = true, true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, client)
		delete(p.conns, up)
		p.mu.Unlock()
		client.Close()
		up.Close()
	}()
	go func() { _, _ = io.Copy(up, client); up.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if p.count(int64(n)) {
				return // cut: what was read now never reaches the client
			}
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// count adds n bytes sent by the target and reports whether that crossed a cut point, in
// which case every open connection has been closed.
func (p *tcpProxy) count(n int64) bool {
	total := p.sent.Add(n)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.cutAt) == 0 || total < p.cutAt[0] {
		return false
	}
	for len(p.cutAt) > 0 && total >= p.cutAt[0] {
		p.cutAt = p.cutAt[1:]
	}
	p.cuts++
	for c := range p.conns {
		c.Close()
	}
	return true
}

// Sent is how many bytes the target sent through the proxy so far.
func (p *tcpProxy) Sent() int64 { return p.sent.Load() }

// Cuts is how many times the proxy cut its connections.
func (p *tcpProxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// dpNode is a DP run by `ibcm dp serve --config` with a certificate of its own.
type dpNode struct {
	id, dir, config, library   string
	intranetAddr, internetAddr string // where it listens
	intranetURL, internetURL   string // what it registers (a proxy's URL when one is in front)
	proc                       *proc
}

// dpSpec says how to run a DP.
type dpSpec struct {
	id, mode string
	priority int
	sources  []string // pull.sources (URLs, in priority order); none: the origin DP(s)
	// front, when set, is called with each listener ("intranet", "internet") and its address
	// before the DP starts and returns the URL the DP registers for it (a proxy's in front).
	front func(listener, addr string) string
}

// startDP issues a site-server certificate of role dp for spec.id, writes a DP config that
// holds no database settings at all, runs `ibcm dp serve --config` until the test ends and
// returns once its listeners are up and the MP lists it online.
func (s *testSite) startDP(t *testing.T, spec dpSpec) *dpNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), spec.id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s.ibcm(t, "ca", "issue", "--profile", "site-server", "--role", "dp", "--subject", spec.id, "--dns", "127.0.0.1",
		"--out", filepath.Join(dir, spec.id))
	n := &dpNode{id: spec.id, dir: dir, config: filepath.Join(dir, "dp.yaml"), library: filepath.Join(dir, "content"),
		intranetAddr: freeAddr(t), internetAddr: freeAddr(t)}
	n.intranetURL, n.internetURL = "https://"+n.intranetAddr, "https://"+n.internetAddr
	if spec.front != nil {
		n.intranetURL, n.internetURL = spec.front(wire.Intranet, n.intranetAddr), spec.front(wire.Internet, n.internetAddr)
	}
	dp := map[string]any{
		"id": spec.id, "mode": spec.mode, "priority": spec.priority, "origin": false,
		"intranet_listen": n.intranetAddr, "intranet_url": n.intranetURL,
		"internet_listen": n.internetAddr, "internet_url": n.internetURL,
		"tls_cert": spec.id + ".crt", "tls_key": spec.id + ".key", "roots": s.path("ca/root.crt"),
		"site_code": "E2E", "mp_url": s.mpIntranet, "library": "content", "validate_interval": "24h",
	}
	if len(spec.sources) > 0 {
		var src []map[string]any
		for i, u := range spec.sources {
			src = append(src, map[string]any{"url": u, "priority": i + 1})
		}
		dp["pull"] = map[string]any{"sources": src}
	}
	b, err := yaml.Marshal(map[string]any{"version": 1, "dp": dp})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	n.proc = s.start(t, "dp", "serve", "--config", n.config)
	s.waitDP(t, spec.id, "registered and online", func(d wire.DPInfo) bool { return d.Online })
	return n
}

// dps is `ibcm dp list --json`.
func (s *testSite) dps(t *testing.T) []wire.DPInfo {
	t.Helper()
	var out []wire.DPInfo
	if err := json.Unmarshal([]byte(s.ibcm(t, "dp", "list", "--json")), &out); err != nil {
		t.Fatalf("ibcm dp list --json: %v", err)
	}
	return out
}

// waitDP waits until the MP lists DP id satisfying cond and returns it.
func (s *testSite) waitDP(t *testing.T, id, what string, cond func(wire.DPInfo) bool) wire.DPInfo {
	t.Helper()
	var found wire.DPInfo
	waitFor(t, 20*time.Second, "DP "+id+" "+what, func() bool {
		for _, d := range s.dps(t) {
			if d.ID == id && cond(d) {
				found = d
				return true
			}
		}
		return false
	})
	return found
}

// originDP is the origin DP the site runs (`site up`), as the MP lists it once registered.
func (s *testSite) originDP(t *testing.T) wire.DPInfo {
	t.Helper()
	var found wire.DPInfo
	waitFor(t, 20*time.Second, "the site's origin DP registered and online", func() bool {
		for _, d := range s.dps(t) {
			if d.Origin && d.Online {
				found = d
				return true
			}
		}
		return false
	})
	return found
}

// waitPackage waits until DP id holds package name version ready and returns its state. A
// pull-DP whose sources all failed reports failed and tries again after a backoff, so a
// failed state is logged, not fatal, until limit.
func (s *testSite) waitPackage(t *testing.T, id, name, version string, limit time.Duration) wire.DPPackageState {
	t.Helper()
	var last []wire.DPPackageState
	failures := map[string]bool{}
	deadline := time.Now().Add(limit)
	for {
		var st wire.DPPackageState
		for _, d := range s.dps(t) {
			if d.ID != id {
				continue
			}
			last = d.Packages
			for _, p := range d.Packages {
				if p.Name == name && p.Version == version {
					st = p
				}
			}
		}
		switch {
		case st.State == wire.DPReady:
			return st
		case st.State == wire.DPFailed && !failures[st.Error]:
			failures[st.Error] = true
			t.Logf("DP %s: %s %s failed for now (a pull-DP tries again): %s", id, name, version, st.Error)
		case time.Now().After(deadline):
			t.Fatalf("DP %s: %s %s not ready within %v; its packages: %+v", id, name, version, limit, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pkgFile is one file of a test package.
type pkgFile struct {
	name, path string
	data       []byte
	sha256     string
}

// writePackage writes files of the given sizes into a new directory, their bytes drawn
// from a generator seeded by their names (the same package every run).
func writePackage(t *testing.T, sizes map[string]int) []pkgFile {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for n := range sizes {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []pkgFile
	for _, n := range names {
		var seed [32]byte
		copy(seed[:], n)
		data := make([]byte, sizes[n])
		_, _ = mrand.NewChaCha8(seed).Read(data)
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		out = append(out, pkgFile{name: n, path: p, data: data, sha256: hex.EncodeToString(sum[:])})
	}
	return out
}

// fileNamed is the file of a test package with this name.
func fileNamed(t *testing.T, files []pkgFile, name string) pkgFile {
	t.Helper()
	for _, f := range files {
		if f.name == name {
			return f
		}
	}
	t.Fatalf("no file %s in the package", name)
	return pkgFile{}
}

// contentAdd is `ibcm content add NAME --version V [extra] FILE...`.
func (s *testSite) contentAdd(t *testing.T, name, version string, files []pkgFile, extra ...string) string {
	t.Helper()
	args := append([]string{"content", "add", name, "--version", version}, extra...)
	for _, f := range files {
		args = append(args, f.path)
	}
	return s.ibcm(t, args...)
}

// blobPath is where a DP's library holds a blob: <library>/<ab>/<cd>/<sha256>.
func blobPath(library, sum string) string {
	return filepath.Join(library, sum[:2], sum[2:4], sum)
}

// checkLibrary fails t unless the library holds every file as a blob whose bytes hash to
// its name, and nothing half-written (.part) is left.
func checkLibrary(t *testing.T, library string, files []pkgFile) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(blobPath(library, f.sha256))
		if err != nil {
			t.Errorf("library %s: %s (%s): %v", library, f.name, f.sha256, err)
			continue
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != f.sha256 {
			t.Errorf("library %s: blob %s hashes to %x", library, f.sha256, sum)
		}
	}
	_ = filepath.WalkDir(library, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".part") {
			t.Errorf("library %s: a partial file is left: %s", library, p)
		}
		return nil
	})
}

// curlAnswer is what curl got from a DP.
type curlAnswer struct {
	status int // 0 when there was no HTTP answer (a refused handshake)
	header http.Header
	body   []byte
	exit   int
	stderr string
}

// clientCert is a certificate and key file for curl; the zero value sends none.
type clientCert struct{ cert, key string }

func deviceCert(dev string) clientCert {
	return clientCert{filepath.Join(dev, "cert.pem"), filepath.Join(dev, "key.pem")}
}

// curlDP asks url with curl over HTTP/1.1, trusting the site's root, presenting cc.
func (s *testSite) curlDP(t *testing.T, cc clientCert, url string, extra ...string) curlAnswer {
	t.Helper()
	dir := t.TempDir()
	hdr, body := filepath.Join(dir, "headers"), filepath.Join(dir, "body")
	args := []string{"-sS", "--http1.1", "--max-time", "20", "--cacert", s.path("ca/root.crt"), "-D", hdr, "-o", body, "-w", "%{http_code}"}
	if cc.cert != "" {
		args = append(args, "--cert", cc.cert, "--key", cc.key)
	}
	r := run(t, "curl", append(append(args, extra...), url)...)
	a := curlAnswer{header: http.Header{}, exit: r.code, stderr: r.stderr}
	a.status, _ = strconv.Atoi(strings.TrimSpace(r.stdout))
	a.body, _ = os.ReadFile(body)
	h, _ := os.ReadFile(hdr)
	for _, line := range strings.Split(string(h), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			a.header.Add(k, strings.TrimSpace(v))
		}
	}
	return a
}

// foreignCert writes a client certificate of another CA, which names this site's code and
// a device, and its key.
func foreignCert(t *testing.T) clientCert {
	t.Helper()
	other, err := ca.NewHierarchy("E2E", ca.P256, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "pc-forged"},
		URIs:      []*url.URL{{Scheme: "urn", Opaque: "ibcm:site:E2E:device:0123456789abcdef0123456789abcdef"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, other.Issuing, &key.PublicKey, other.IssuingKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	cc := clientCert{filepath.Join(dir, "forged.crt"), filepath.Join(dir, "forged.key")}
	var chain bytes.Buffer
	_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: other.Issuing.Raw})
	if err := os.WriteFile(cc.cert, chain.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cc.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cc
}

// certSerial is a certificate's serial as openssl prints it (what `ibcm ca revoke` takes).
func certSerial(t *testing.T, cert string) string {
	t.Helper()
	return strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", cert, "-noout", "-serial")), "serial=")
}

// revokedWithin revokes the device's certificate and returns how long until the DP at url
// refused it at the handshake; it fails t past limit.
func (s *testSite) revokedWithin(t *testing.T, dev, url string, limit time.Duration) time.Duration {
	t.Helper()
	sn := certSerial(t, filepath.Join(dev, "cert.pem"))
	return s.refusedWithin(t, dev, url, limit, func() { s.ibcm(t, "ca", "revoke", "--reason", "keyCompromise", sn) })
}

// refusedWithin checks that the DP at url answers the device, runs cut (an admin command)
// and returns how long from cut's start until the DP refused the device at the handshake; it
// fails t past limit.
func (s *testSite) refusedWithin(t *testing.T, dev, url string, limit time.Duration, cut func()) time.Duration {
	t.Helper()
	if a := s.curlDP(t, deviceCert(dev), url, "-I"); a.status != http.StatusOK {
		t.Fatalf("before: HEAD %s: %d (curl exit %d) %s", url, a.status, a.exit, a.stderr)
	}
	start := time.Now()
	cut()
	for {
		a := s.curlDP(t, deviceCert(dev), url, "-I")
		if a.status == 0 && a.exit != 0 {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("the DP at %s still answers %d %v after the admin command started", url, a.status, time.Since(start))
		}
		time.Sleep(10 * time.Millisecond) // polling the condition itself
	}
}

// deployments is `ibcm deploy list --json`.
func (s *testSite) deployments(t *testing.T) []wire.DeploymentInfo {
	t.Helper()
	var out []wire.DeploymentInfo
	if err := json.Unmarshal([]byte(s.ibcm(t, "deploy", "list", "--json")), &out); err != nil {
		t.Fatalf("ibcm deploy list --json: %v", err)
	}
	return out
}

// deploy is `ibcm deploy create NAME --version V --group G --install`; it returns the id.
func (s *testSite) deploy(t *testing.T, name, version, group string) string {
	t.Helper()
	var d wire.DeploymentInfo
	out := s.ibcm(t, "deploy", "create", name, "--version", version, "--group", group, "--install", "--json")
	if err := json.Unmarshal([]byte(out), &d); err != nil || d.ID == "" || d.Package != name || !d.Install {
		t.Fatalf("ibcm deploy create --json: %v\n%s", err, out)
	}
	for _, x := range s.deployments(t) {
		if x.ID == d.ID {
			return d.ID
		}
	}
	t.Fatalf("ibcm deploy list does not show deployment %s", d.ID)
	return ""
}

// deployStatus is `ibcm deploy status --json ID`.
func (s *testSite) deployStatus(t *testing.T, id string) wire.DeploymentInfo {
	t.Helper()
	var d wire.DeploymentInfo
	if err := json.Unmarshal([]byte(s.ibcm(t, "deploy", "status", "--json", id)), &d); err != nil {
		t.Fatalf("ibcm deploy status --json: %v", err)
	}
	return d
}

// waitInstalled waits until n devices of deployment id are installed, failing at once
// when one failed, and returns the deployment.
func (s *testSite) waitInstalled(t *testing.T, id string, n int, limit time.Duration) wire.DeploymentInfo {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		d := s.deployStatus(t, id)
		for _, dev := range d.Devices {
			if dev.State == wire.DeployFailed {
				t.Fatalf("deployment %s: device %s failed (exit %v): %s\n%s", id, dev.Name, dev.ExitCode, dev.Error, s.ibcm(t, "deploy", "status", id))
			}
		}
		if d.Counts[wire.DeployInstalled] == n {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s: %d installed within %v, want %d\n%s", id, d.Counts[wire.DeployInstalled], limit, n, s.ibcm(t, "deploy", "status", id))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// usedDP reports whether what a device reported in a status message's dp field names the
// DP: its id or one of its URLs.
func usedDP(reported string, d wire.DPInfo) bool {
	if reported == "" {
		return false
	}
	return reported == d.ID || (d.IntranetURL != "" && strings.HasPrefix(reported, d.IntranetURL)) ||
		(d.InternetURL != "" && strings.HasPrefix(reported, d.InternetURL))
}

// refusesTCP fails t unless nothing accepts TCP connections at addr.
func refusesTCP(t *testing.T, addr, what string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("%s: %s accepts connections", what, addr)
	}
}

// deviceOf finds a device's row in a deployment.
func deviceOf(t *testing.T, d wire.DeploymentInfo, id string) wire.DeploymentDevice {
	t.Helper()
	for _, x := range d.Devices {
		if x.DeviceID == id {
			return x
		}
	}
	t.Fatalf("deployment %s has no device %s: %+v", d.ID, id, d.Devices)
	return wire.DeploymentDevice{}
}

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
