package integration

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The distribution point with real binaries: the origin DP of `ibcm site up` serving what
// `ibcm content add` uploaded to curl over mutual TLS, a standalone pull-DP with no database
// settings syncing over a connection cut twice, a deployment reaching an agent on the
// intranet and one on the internet each from the DP of its location, and a flipped byte on
// one DP that the agent stops at and completes from another.

const chunk = manifest.DefaultChunkSize // `ibcm content add` cuts files into chunks of this size

// TestDPContent: curl with a device's certificate gets ranges (206, Content-Range), If-Range
// with the hash (206) and with another value (the whole blob, 200) and the signed manifest
// from the site's origin DP; no certificate, a foreign CA's and a revoked one are refused at
// the handshake, the revoked one within a second. The DP runs in internet mode: its
// intranet port refuses connections.
func TestDPContent(t *testing.T) {
	needTool(t, "curl")
	needTool(t, "openssl")
	s := startSite(t, "sqlite", "--dp-mode", wire.DPModeInternet)
	dpIntranet, dpInternet := s.dpListen(t)
	origin := s.originDP(t)
	if origin.Mode != wire.DPModeInternet {
		t.Errorf("the site's DP: mode %q, want internet: %+v", origin.Mode, origin)
	}
	refusesTCP(t, dpIntranet, "a DP in internet mode opened its intranet listener")
	base := "https://" + dpInternet

	files := writePackage(t, map[string]int{"tool.bin": 2*chunk + 12345, "README": 300, "setup.sh": 64})
	big := fileNamed(t, files, "tool.bin")
	var total int64
	for _, f := range files {
		total += int64(len(f.data))
	}
	var added struct{ Uploaded, Skipped int64 }
	out := s.contentAdd(t, "tools", "1.0", files, "--install-command", "sh setup.sh", "--success-codes", "0,3", "--json")
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.Uploaded != total || added.Skipped != 0 {
		t.Errorf("ibcm content add --json: uploaded %d, skipped %d, want %d and 0 (%v)\n%s", added.Uploaded, added.Skipped, total, err, out)
	}
	// the library is single-instance: another version of the same files uploads nothing
	out = s.contentAdd(t, "tools", "1.1", files, "--json")
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.Uploaded != 0 || added.Skipped != total {
		t.Errorf("ibcm content add --json of the same files again: uploaded %d, skipped %d, want 0 and %d (%v)\n%s", added.Uploaded, added.Skipped, total, err, out)
	}
	s.ibcm(t, "content", "distribute", "tools", "--version", "1.0")
	s.waitPackage(t, origin.ID, "tools", "1.0", 20*time.Second)

	dev := enrollDevice(t, s, "pc-dp1")
	cc := deviceCert(dev)
	blob := base + "/v1/content/" + big.sha256
	size := int64(len(big.data))

	// the signed manifest: the CA's content signer, our files, cut in chunks
	a := s.curlDP(t, cc, base+"/v1/manifests/tools/1.0")
	if a.status != http.StatusOK {
		t.Fatalf("GET manifest: %d (curl exit %d) %s %s", a.status, a.exit, a.body, a.stderr)
	}
	sm, err := manifest.ParseSigned(a.body)
	if err != nil {
		t.Fatalf("the DP's manifest: %v\n%s", err, a.body)
	}
	roots := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(s.path("ca/root.crt"))
	roots.AppendCertsFromPEM(rootPEM)
	m, err := manifest.Verify(sm, manifest.Trust{Roots: roots, SiteCode: "E2E"}, "")
	if err != nil {
		t.Fatalf("verifying the DP's manifest against the site's root: %v", err)
	}
	byName := map[string]wire.ManifestFile{}
	for _, f := range m.Files {
		byName[f.Path] = f
	}
	for _, f := range files {
		mf, ok := byName[f.name]
		if !ok || mf.SHA256 != f.sha256 || mf.Size != int64(len(f.data)) {
			t.Errorf("manifest file %s: %+v, want sha256 %s size %d", f.name, mf, f.sha256, len(f.data))
		}
	}
	if mf := byName["tool.bin"]; m.ChunkSize != chunk || len(mf.Chunks) != 3 {
		t.Errorf("manifest: chunk size %d, tool.bin in %d chunks, want %d and 3", m.ChunkSize, len(mf.Chunks), chunk)
	}
	if m.Install == nil || m.Install.Command != "sh setup.sh" || fmt.Sprint(m.Install.SuccessCodes) != "[0 3]" {
		t.Errorf("manifest install: %+v", m.Install)
	}

	// HEAD: length and ETag = the hash
	etag := `"` + big.sha256 + `"`
	a = s.curlDP(t, cc, blob, "-I")
	if a.status != http.StatusOK || a.header.Get("ETag") != etag || a.header.Get("Content-Length") != fmt.Sprint(size) {
		t.Errorf("HEAD blob: %d ETag %q Content-Length %q", a.status, a.header.Get("ETag"), a.header.Get("Content-Length"))
	}
	// ranges: the start, across a chunk boundary, the tail
	for _, r := range []struct{ from, to int64 }{{0, 99}, {chunk - 10, chunk + 9}, {size - 100, size - 1}} {
		spec := fmt.Sprintf("%d-%d", r.from, r.to)
		a = s.curlDP(t, cc, blob, "-r", spec)
		want := fmt.Sprintf("bytes %d-%d/%d", r.from, r.to, size)
		if a.status != http.StatusPartialContent || a.header.Get("Content-Range") != want || string(a.body) != string(big.data[r.from:r.to+1]) {
			t.Errorf("Range %s: %d Content-Range %q (want %q), %d bytes, right bytes %v", spec, a.status, a.header.Get("Content-Range"), want,
				len(a.body), string(a.body) == string(big.data[r.from:r.to+1]))
		}
	}
	// If-Range with the hash: the range; with another value: the whole blob
	from := int64(chunk + 1)
	a = s.curlDP(t, cc, blob, "-r", fmt.Sprintf("%d-", from), "-H", "If-Range: "+etag)
	if a.status != http.StatusPartialContent || a.header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", from, size-1, size) || string(a.body) != string(big.data[from:]) {
		t.Errorf("If-Range with the hash: %d Content-Range %q, %d bytes", a.status, a.header.Get("Content-Range"), len(a.body))
	}
	other := sha256.Sum256([]byte("another version"))
	a = s.curlDP(t, cc, blob, "-r", fmt.Sprintf("%d-", from), "-H", `If-Range: "`+hex.EncodeToString(other[:])+`"`)
	if sum := sha256.Sum256(a.body); a.status != http.StatusOK || a.header.Get("Content-Range") != "" || hex.EncodeToString(sum[:]) != big.sha256 {
		t.Errorf("If-Range with another value: %d Content-Range %q, %d bytes, want 200 and the whole blob", a.status, a.header.Get("Content-Range"), len(a.body))
	}
	// what the DP does not hold, and what is no hash
	if a = s.curlDP(t, cc, base+"/v1/content/"+hex.EncodeToString(other[:])); a.status != http.StatusNotFound || !strings.Contains(string(a.body), `"error"`) {
		t.Errorf("GET an unknown blob: %d %s", a.status, a.body)
	}
	if a = s.curlDP(t, cc, base+"/v1/content/..%2f..%2fsite.yaml"); a.status < 400 || a.status >= 500 {
		t.Errorf("GET a content path that is no hash: %d %s", a.status, a.body)
	}
	if a = s.curlDP(t, cc, blob, "-r", fmt.Sprintf("%d-", size)); a.status != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("Range past the end: %d, want 416", a.status)
	}
	// the admin's user certificate gets in too
	if a = s.curlDP(t, clientCert{s.path("admin/admin.crt"), s.path("admin/admin.key")}, blob, "-r", "0-9"); a.status != http.StatusPartialContent {
		t.Errorf("Range with the admin's certificate: %d %s", a.status, a.stderr)
	}

	// refused at the handshake: no certificate, another CA's
	for name, c := range map[string]clientCert{"no certificate": {}, "a foreign CA's certificate": foreignCert(t)} {
		if a = s.curlDP(t, c, blob, "-r", "0-9"); a.status != 0 || a.exit == 0 {
			t.Errorf("%s: HTTP %d (curl exit %d), want the handshake refused", name, a.status, a.exit)
		}
	}
	took := s.revokedWithin(t, dev, blob, time.Second)
	t.Logf("the site's DP refused the revoked certificate %v after ibcm ca revoke started", took)
}

// TestDPStandalonePull: a DP run alone (`ibcm dp serve`, a config with no database settings,
// its own certificate from `ibcm ca issue --role dp`) in internet mode registers through the
// MP, pulls what `ibcm content distribute --dp` gives it from the origin DP over a
// connection the test cuts twice mid-transfer, resumes, and ends ready with a library of
// verified blobs; it serves them, and refuses a revoked certificate and a blocked device
// within a second (which it learns from the MP's feed).
func TestDPStandalonePull(t *testing.T) {
	needTool(t, "curl")
	needTool(t, "openssl")
	s := startSite(t, "sqlite", "--dp-mode", wire.DPModeBoth)
	originIntranet, _ := s.dpListen(t)
	origin := s.originDP(t)

	files := writePackage(t, map[string]int{"suite.bin": 3*chunk + 777, "notes.txt": 1000})
	var total int64
	for _, f := range files {
		total += int64(len(f.data))
	}
	s.contentAdd(t, "suite", "2.1", files)
	s.ibcm(t, "content", "distribute", "suite", "--version", "2.1", "--dp", origin.ID)

	// the pull-DP reaches the origin only through the proxy, which cuts twice mid-transfer
	proxy := startProxy(t, originIntranet, 3<<20, 8<<20)
	dp2 := s.startDP(t, dpSpec{id: "dp2", mode: wire.DPModeInternet, priority: 5, sources: []string{proxy.URL}})
	cfg, _ := os.ReadFile(dp2.config)
	for _, key := range []string{"store", "dsn", "database", "password"} {
		if strings.Contains(string(cfg), key) {
			t.Fatalf("the standalone DP's config mentions %q:\n%s", key, cfg)
		}
	}
	refusesTCP(t, dp2.intranetAddr, "a DP in internet mode opened its intranet listener")
	if d := s.waitDP(t, "dp2", "listed", func(wire.DPInfo) bool { return true }); d.Mode != wire.DPModeInternet || d.Origin || d.InternetURL != dp2.internetURL {
		t.Errorf("ibcm dp list: dp2 %+v", d)
	}

	start := time.Now()
	s.ibcm(t, "content", "distribute", "suite", "--version", "2.1", "--dp", "dp2")
	s.waitPackage(t, "dp2", "suite", "2.1", 90*time.Second)
	t.Logf("dp2 synced %s in %v over a connection cut %d times; the origin sent %s through the proxy",
		mib(total), time.Since(start).Round(time.Millisecond), proxy.Cuts(), mib(proxy.Sent()))
	if proxy.Cuts() != 2 {
		t.Errorf("the proxy cut the pull %d times, want 2", proxy.Cuts())
	}
	// each cut loses at most the chunk it was in: resumed, not started over
	if limit := total + 2*chunk + 1<<20; proxy.Sent() > limit {
		t.Errorf("the origin sent %s for %s cut twice, more than %s: the pull did not resume", mib(proxy.Sent()), mib(total), mib(limit))
	}
	checkLibrary(t, dp2.library, files)
	if out := s.ibcm(t, "dp", "list"); !strings.Contains(out, "dp2") || !strings.Contains(out, "ready") {
		t.Errorf("ibcm dp list:\n%s", out)
	}

	// dp2 serves what it pulled, to devices only
	dev := enrollDevice(t, s, "pc-dp2")
	big := fileNamed(t, files, "suite.bin")
	a := s.curlDP(t, deviceCert(dev), dp2.internetURL+"/v1/content/"+big.sha256, "-r", fmt.Sprintf("%d-", chunk))
	if a.status != http.StatusPartialContent || string(a.body) != string(big.data[chunk:]) {
		t.Errorf("dp2: Range %d-: %d, %d bytes", chunk, a.status, len(a.body))
	}
	if a = s.curlDP(t, deviceCert(dev), dp2.internetURL+"/v1/manifests/suite/2.1"); a.status != http.StatusOK {
		t.Errorf("dp2: GET manifest: %d %s", a.status, a.body)
	}
	if a = s.curlDP(t, foreignCert(t), dp2.internetURL+"/v1/content/"+big.sha256, "-r", "0-9"); a.status != 0 {
		t.Errorf("dp2: a foreign CA's certificate got HTTP %d", a.status)
	}
	took := s.revokedWithin(t, dev, dp2.internetURL+"/v1/content/"+big.sha256, time.Second)
	t.Logf("the standalone DP refused the revoked certificate %v after ibcm ca revoke started", took)
	blocked := enrollDevice(t, s, "pc-dp2-blocked")
	if r := curlMP(t, s, blocked, s.mpInternet+"/v1/checkin", "-d", `{"location":"internet","compliance":"compliant"}`); r.code != 0 {
		t.Fatalf("check-in (the MP knows a device from its first one): %s%s", r.stdout, r.stderr)
	}
	took = s.refusedWithin(t, blocked, dp2.internetURL+"/v1/content/"+big.sha256, time.Second, func() {
		s.ibcm(t, "device", "block", deviceIDOf(t, blocked))
	})
	t.Logf("the standalone DP refused the blocked device %v after ibcm device block started", took)
}

// TestDPDeployment: a deployment to a group reaches an agent on the intranet and one on the
// internet (each located by the real detection: BIND for the intranet), each downloads from
// the DP of its location (the site's DP in intranet mode, a standalone DP in internet mode),
// both install, and `ibcm deploy status` counts 2 installed. Later policy fetches (an agent
// restarted, a second deployment to the group which both install) do not reinstall the first.
func TestDPDeployment(t *testing.T) {
	s, corpResolv := intranetSite(t, "--dp-mode", wire.DPModeIntranet)
	origin := s.originDP(t)
	s.startDP(t, dpSpec{id: "dp2", mode: wire.DPModeInternet, priority: 5})

	installs := filepath.Join(t.TempDir(), "installs")
	files := writePackage(t, map[string]int{"app.bin": chunk + 4321, "app.conf": 200})
	app := fileNamed(t, files, "app.bin")
	// the install runs in the package's directory: it records where and the hash it saw
	s.contentAdd(t, "app", "1.0", files, "--install-command",
		fmt.Sprintf(`echo "$(pwd) $(sha256sum < app.bin | cut -d' ' -f1)" >> %s`, installs), "--install-timeout", "30s")
	s.ibcm(t, "content", "distribute", "app", "--version", "1.0")
	s.waitPackage(t, origin.ID, "app", "1.0", 20*time.Second)
	s.waitPackage(t, "dp2", "app", "1.0", 30*time.Second)

	devIn, devOut := enrollDevice(t, s, "pc-lan"), enrollDevice(t, s, "pc-road")
	idIn, idOut := deviceIDOf(t, devIn), deviceIDOf(t, devOut)
	roadResolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, roadResolv) // no nameservers: no intranet
	stopIn := startAgent(t, devIn, corpResolv)
	startAgent(t, devOut, roadResolv)
	waitFor(t, 15*time.Second, "both agents checked in, each at its location", func() bool {
		in, out := statusOf(t, devIn), statusOf(t, devOut)
		return in.Location == wire.Intranet && in.LastCheckin != nil && out.Location == wire.Internet && out.LastCheckin != nil
	})

	s.ibcm(t, "group", "create", "lab")
	s.ibcm(t, "group", "add", "lab", idIn)
	s.ibcm(t, "group", "add", "lab", idOut)
	start := time.Now()
	id := s.deploy(t, "app", "1.0", "lab")
	d := s.waitInstalled(t, id, 2, 60*time.Second)
	t.Logf("deployment %s installed on both devices in %v", id, time.Since(start).Round(time.Millisecond))
	if in := deviceOf(t, d, idIn); !usedDP(in.DP, origin) {
		t.Errorf("the intranet device downloaded from %q, want the intranet DP %s (%s)", in.DP, origin.ID, origin.IntranetURL)
	}
	dp2Info := s.waitDP(t, "dp2", "listed", func(wire.DPInfo) bool { return true })
	if out := deviceOf(t, d, idOut); !usedDP(out.DP, dp2Info) {
		t.Errorf("the internet device downloaded from %q, want the internet DP dp2 (%s)", out.DP, dp2Info.InternetURL)
	}
	if out := s.ibcm(t, "deploy", "status", id); !strings.Contains(out, "installed") || !strings.Contains(out, "pc-lan") || !strings.Contains(out, "pc-road") {
		t.Errorf("ibcm deploy status:\n%s", out)
	}
	lines := installLines(t, installs)
	if len(lines) != 2 || lines[0] == lines[1] {
		t.Fatalf("install command runs: %q, want one on each device", lines)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, " "+app.sha256) {
			t.Errorf("an install saw app.bin with another hash: %q, want %s", l, app.sha256)
		}
	}
	before, err := os.Stat(installs)
	if err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{devIn, devOut} {
		if r := localDeployment(t, dev, id); r.State != wire.DeployInstalled || r.ManifestSHA256 != d.ManifestSHA256 {
			t.Errorf("ibcm-client deployments --json on %s: %+v", filepath.Base(dev), r)
		}
	}

	// later policy fetches: the intranet agent restarts (it fetches its policy afresh), then a
	// second deployment goes to the group; once both devices installed it, the first has not
	// run again
	stopIn()
	startAgent(t, devIn, corpResolv)
	notes := filepath.Join(t.TempDir(), "notes-installs")
	s.contentAdd(t, "notes", "1", writePackage(t, map[string]int{"notes.txt": 100}), "--install-command", "echo done >> "+notes)
	s.ibcm(t, "content", "distribute", "notes", "--version", "1")
	s.waitPackage(t, origin.ID, "notes", "1", 20*time.Second)
	s.waitPackage(t, "dp2", "notes", "1", 30*time.Second)
	id2 := s.deploy(t, "notes", "1", "lab")
	s.waitInstalled(t, id2, 2, 60*time.Second)
	if got := installLines(t, notes); len(got) != 2 {
		t.Errorf("the second deployment ran %d times, want 2", len(got))
	}
	after, _ := os.Stat(installs)
	if got := installLines(t, installs); len(got) != 2 || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the first deployment ran again on a later policy: %q", got)
	}
	if d := s.deployStatus(t, id); d.Counts[wire.DeployInstalled] != 2 {
		t.Errorf("deployment %s after the later policy: %v", id, d.Counts)
	}
}

// TestDPCorruptChunk: one byte of a blob flipped in a DP's library; the agent, which asks
// that DP first (priority 1), stops within about a chunk of the bad one and completes from
// the site's DP, keeping the chunks it had verified; what it installs has the right hash.
// The bytes each DP sent are counted by a proxy in front of it (the URL each registers).
func TestDPCorruptChunk(t *testing.T) {
	s := initSite(t, "sqlite", "--dp-mode", wire.DPModeInternet)
	_, originInternet := s.dpListen(t)
	good := startProxy(t, originInternet)
	editSection(t, s.path("site.yaml"), s.path("site.yaml"), "dp", func(dp map[string]any) {
		dp["priority"] = 50
		dp["internet_url"] = good.URL
	})
	s.start(t, "site", "up", "--dir", s.dir)
	origin := s.originDP(t)
	var bad *tcpProxy // in front of dp3's internet listener
	dp3 := s.startDP(t, dpSpec{id: "dp3", mode: wire.DPModeInternet, priority: 1, front: func(listener, addr string) string {
		if listener != wire.Internet {
			return "https://" + addr
		}
		bad = startProxy(t, addr)
		return bad.URL
	}})
	installed := filepath.Join(t.TempDir(), "installed")
	files := writePackage(t, map[string]int{"payload.bin": 12 * chunk})
	payload := files[0]
	size := int64(len(payload.data))
	s.contentAdd(t, "payload", "1.0", files, "--install-command", fmt.Sprintf("sha256sum < payload.bin | cut -d' ' -f1 > %s", installed))
	s.ibcm(t, "content", "distribute", "payload", "--version", "1.0")
	s.waitPackage(t, origin.ID, "payload", "1.0", 20*time.Second)
	s.waitPackage(t, "dp3", "payload", "1.0", 60*time.Second)

	// flip one byte in the second chunk of dp3's copy
	const at = chunk + 1000
	blobFile := blobPath(dp3.library, payload.sha256)
	f, err := os.OpenFile(blobFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{payload.data[at] ^ 0x01}
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	f.Close()

	dev := enrollDevice(t, s, "pc-flip")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv)
	startAgent(t, dev, resolv)
	waitFor(t, 15*time.Second, "the agent checked in on the internet", func() bool {
		st := statusOf(t, dev)
		return st.Location == wire.Internet && st.LastCheckin != nil
	})
	devID := deviceIDOf(t, dev)
	s.ibcm(t, "group", "create", "flip")
	s.ibcm(t, "group", "add", "flip", devID)
	badBefore, goodBefore := bad.Sent(), good.Sent()
	id := s.deploy(t, "payload", "1.0", "flip")
	d := s.waitInstalled(t, id, 1, 60*time.Second)
	fromBad, fromGood := bad.Sent()-badBefore, good.Sent()-goodBefore
	t.Logf("payload %s, a byte flipped at %d (chunk 2 of %d): dp3 sent %s, then the site's DP sent %s",
		mib(size), at, size/chunk, mib(fromBad), mib(fromGood))
	if dd := deviceOf(t, d, devID); !usedDP(dd.DP, origin) {
		t.Errorf("the device reports it completed from %q, want the site's DP %s", dd.DP, origin.ID)
	}
	if got, err := os.ReadFile(installed); err != nil || strings.TrimSpace(string(got)) != payload.sha256 {
		t.Errorf("the install saw payload.bin hashing to %q (%v), want %s", got, err, payload.sha256)
	}
	if fromBad < at || fromBad > size/2 {
		t.Errorf("dp3 sent %s of a %s payload with a bad byte at %d: the agent did not stop within about a chunk of it", mib(fromBad), mib(size), at)
	}
	if fromGood >= size || fromGood < size-2*chunk {
		t.Errorf("the site's DP sent %s of %s: the agent did not keep the chunk it had verified from dp3", mib(fromGood), mib(size))
	}
	var msgs wire.DeviceMessages
	if err := json.Unmarshal([]byte(s.ibcm(t, "device", "messages", "--json", devID)), &msgs); err == nil {
		for _, m := range msgs.Messages {
			if m.Component == wire.DeploymentComponent {
				t.Logf("status message: %s %v", m.Text, m.Fields)
			}
		}
	}
}

// localRecord is a line of `ibcm-client deployments --json`: the agent's record of a deployment.
type localRecord struct {
	ID             string `json:"id"`
	State          string `json:"state"`
	ManifestSHA256 string `json:"manifest_sha256"`
	DP             string `json:"dp"`
}

// localDeployment is the agent's record of deployment id (`ibcm-client deployments --json`).
func localDeployment(t *testing.T, dev, id string) localRecord {
	t.Helper()
	out := must(t, bin.client, "deployments", "--dir", dev, "--json")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r localRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("ibcm-client deployments --json: %v\n%s", err, out)
		}
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("ibcm-client deployments --json has no deployment %s:\n%s", id, out)
	return localRecord{}
}

// installLines are the lines an install command appended to file (none when it never ran).
func installLines(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}
