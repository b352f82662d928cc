package dp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/dp/library"
	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// blob puts data in the DP's library and returns its hash.
func blob(t *testing.T, r *runningDP, data []byte) string {
	t.Helper()
	sum := sha(data)
	if _, err := r.dp.Library().Put(sum, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return sum
}

func testData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// TestContentWithCurl: the real curl with a device certificate gets a blob whole, a Range
// (206 + Content-Range), If-Range with the hash (206) and with another value (200 whole),
// HEAD with the length, 404 JSON for a blob not there and 400 for a bad hash.
func TestContentWithCurl(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	data := testData(300_000)
	sum := blob(t, r, data)
	base := r.urls["dp-intranet"] + "/v1/content/"
	dev := p.client(t, "device")

	whole := curl(t, p, dev, http.MethodGet, base+sum)
	if whole.err != nil || whole.status != 200 || !bytes.Equal(whole.body, data) {
		t.Fatalf("whole: %v %d %d bytes %s", whole.err, whole.status, len(whole.body), whole.stderr)
	}
	if got := whole.headers.Get("ETag"); got != `"`+sum+`"` {
		t.Errorf("ETag = %q", got)
	}
	if got := whole.headers.Get("Content-Length"); got != fmt.Sprint(len(data)) {
		t.Errorf("Content-Length = %q", got)
	}
	cases := []struct {
		name    string
		headers []string
		status  int
		from    int
		to      int // inclusive
		crange  string
	}{
		{"range", []string{"Range: bytes=1000-1999"}, 206, 1000, 1999, fmt.Sprintf("bytes 1000-1999/%d", len(data))},
		{"open range", []string{"Range: bytes=299000-"}, 206, 299000, len(data) - 1, fmt.Sprintf("bytes 299000-%d/%d", len(data)-1, len(data))},
		{"suffix", []string{"Range: bytes=-10"}, 206, len(data) - 10, len(data) - 1, fmt.Sprintf("bytes %d-%d/%d", len(data)-10, len(data)-1, len(data))},
		{"past the end is cut", []string{"Range: bytes=299990-400000"}, 206, 299990, len(data) - 1, fmt.Sprintf("bytes 299990-%d/%d", len(data)-1, len(data))},
		{"if-range with the etag", []string{"Range: bytes=5-9", `If-Range: "` + sum + `"`}, 206, 5, 9, fmt.Sprintf("bytes 5-9/%d", len(data))},
		{"if-range with the bare hash", []string{"Range: bytes=5-9", "If-Range: " + sum}, 206, 5, 9, fmt.Sprintf("bytes 5-9/%d", len(data))},
		{"if-range with another value", []string{"Range: bytes=5-9", `If-Range: "0000"`}, 200, 0, len(data) - 1, ""},
		{"if-range with a date", []string{"Range: bytes=5-9", "If-Range: Mon, 07 Dec 2026 10:00:00 GMT"}, 200, 0, len(data) - 1, ""},
		{"if-range weak", []string{"Range: bytes=5-9", `If-Range: W/"` + sum + `"`}, 200, 0, len(data) - 1, ""},
		{"several ranges are ignored", []string{"Range: bytes=0-1,5-6"}, 200, 0, len(data) - 1, ""},
		{"bad range syntax is ignored", []string{"Range: bytes=x-y"}, 200, 0, len(data) - 1, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := curl(t, p, dev, http.MethodGet, base+sum, c.headers...)
			if res.err != nil {
				t.Fatalf("curl: %v %s", res.err, res.stderr)
			}
			if res.status != c.status {
				t.Fatalf("status %d, want %d", res.status, c.status)
			}
			if got := res.headers.Get("Content-Range"); got != c.crange {
				t.Errorf("Content-Range = %q, want %q", got, c.crange)
			}
			if !bytes.Equal(res.body, data[c.from:c.to+1]) {
				t.Errorf("body: %d bytes, want bytes %d-%d", len(res.body), c.from, c.to)
			}
			if got := res.headers.Get("Content-Length"); got != fmt.Sprint(c.to-c.from+1) {
				t.Errorf("Content-Length = %q", got)
			}
		})
	}
	t.Run("unsatisfiable", func(t *testing.T) {
		res := curl(t, p, dev, http.MethodGet, base+sum, "Range: bytes=300000-")
		if res.status != 416 || res.headers.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(data)) {
			t.Fatalf("status %d, Content-Range %q", res.status, res.headers.Get("Content-Range"))
		}
	})
	t.Run("head", func(t *testing.T) {
		res := curl(t, p, dev, http.MethodHead, base+sum)
		if res.err != nil || res.status != 200 || res.headers.Get("Content-Length") != fmt.Sprint(len(data)) {
			t.Fatalf("HEAD: %v %d %q %d", res.err, res.status, res.headers.Get("Content-Length"), len(res.body))
		}
	})
	t.Run("not in the library", func(t *testing.T) {
		res := curl(t, p, dev, http.MethodGet, base+sha([]byte("absent")))
		var e wire.Error
		if res.status != 404 || json.Unmarshal(res.body, &e) != nil || e.Error.Code != "not_found" {
			t.Fatalf("status %d body %s", res.status, res.body)
		}
	})
	for _, bad := range []string{"abc", strings.ToUpper(sum), sum + "00", "..%2f..%2fetc%2fpasswd"} {
		t.Run("bad hash "+bad[:3], func(t *testing.T) {
			res := curl(t, p, dev, http.MethodGet, base+bad)
			var e wire.Error
			if res.status != 400 || json.Unmarshal(res.body, &e) != nil || e.Error.Code != "bad_hash" {
				t.Fatalf("status %d body %s", res.status, res.body)
			}
		})
	}
}

// TestHandshakeRefused: no certificate, or a certificate of a foreign CA, gets no TLS
// session at all.
func TestHandshakeRefused(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	u := r.urls["dp-intranet"] + "/v1/content/" + sha([]byte("x"))
	for name, id := range map[string]*identity{"no certificate": nil, "foreign CA": p.foreign(t)} {
		t.Run(name, func(t *testing.T) {
			if res := curl(t, p, id, http.MethodGet, u); res.err == nil {
				t.Fatalf("curl got HTTP %d", res.status)
			}
			if _, err := goClient(p, id).Get(u); err == nil {
				t.Fatal("the Go client got an answer")
			}
		})
	}
}

// TestRevokedThroughTheFeed: a serial revoked through the MP's feed is refused within a
// second: new handshakes fail and a kept-alive connection is closed.
func TestRevokedThroughTheFeed(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	sum := blob(t, r, testData(1000))
	u := r.urls["dp-intranet"] + "/v1/content/" + sum
	dev := p.client(t, "device")
	if res := curl(t, p, dev, http.MethodGet, u); res.status != 200 {
		t.Fatalf("before: %d %v %s", res.status, res.err, res.stderr)
	}
	// A kept-alive connection with one answered request.
	conn := dialDP(t, p, dev, r.urls["dp-intranet"])
	getOn(t, conn, sum)

	start := time.Now()
	m.send(wire.DPEvent{Type: wire.DPEventRevoked, Serial: dev.leaf.SerialNumber.String()})
	r.waitEvent(t, wire.DPEventRevoked)
	if res := curl(t, p, dev, http.MethodGet, u); res.err == nil {
		t.Fatalf("a revoked certificate got HTTP %d", res.status)
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the kept-alive connection still reads")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the kept-alive connection of the revoked serial stayed open")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("refusing the revoked serial took %s", took)
	}
	if other := curl(t, p, p.client(t, "device2"), http.MethodGet, u); other.status != 200 {
		t.Fatalf("another device: %d %v", other.status, other.err)
	}
}

// TestHTTP11Only: a client offering h2 gets HTTP/1.1 (bulk transfers stay on one
// stream per connection).
func TestHTTP11Only(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	c, err := tls.Dial("tcp", strings.TrimPrefix(r.urls["dp-intranet"], "https://"), &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{p.client(t, "device").pair}, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.ConnectionState().NegotiatedProtocol; got != "http/1.1" {
		t.Fatalf("negotiated %q", got)
	}
}

func dialDP(t *testing.T, p *pki, id *identity, base string) *tls.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	c, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{id.pair}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func getOn(t *testing.T, c *tls.Conn, sum string) {
	t.Helper()
	fmt.Fprintf(c, "GET /v1/content/%s HTTP/1.1\r\nHost: dp\r\n\r\n", sum)
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("kept-alive request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// TestBlockedDevice: a device blocked through the feed (or in the snapshot) is refused; an
// unblocked one is let in again.
func TestBlockedDevice(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	m.snapshot.Blocked = []string{"22222222-2222-4a34-9830-20527b338cb5"}
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	sum := blob(t, r, testData(10))
	u := r.urls["dp-intranet"] + "/v1/content/" + sum
	if res := curl(t, p, p.client(t, "device2"), http.MethodGet, u); res.err == nil {
		t.Fatalf("a device blocked in the snapshot got HTTP %d", res.status)
	}
	dev := p.client(t, "device")
	if res := curl(t, p, dev, http.MethodGet, u); res.status != 200 {
		t.Fatalf("before the block: %d %v", res.status, res.err)
	}
	conn := dialDP(t, p, dev, r.urls["dp-intranet"])
	getOn(t, conn, sum)
	m.send(wire.DPEvent{Type: wire.DPEventBlocked, Device: p.deviceID})
	r.waitEvent(t, wire.DPEventBlocked)
	if res := curl(t, p, dev, http.MethodGet, u); res.err == nil {
		t.Fatalf("a blocked device got HTTP %d", res.status)
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("the blocked device's kept-alive connection still reads")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the blocked device's kept-alive connection stayed open")
	}
	m.send(wire.DPEvent{Type: wire.DPEventUnblocked, Device: p.deviceID})
	r.waitEvent(t, wire.DPEventUnblocked)
	if res := curl(t, p, dev, http.MethodGet, u); res.status != 200 {
		t.Fatalf("after unblocking: %d %v", res.status, res.err)
	}
}

// TestInternetModeOpensNoIntranetListener: a DP in internet mode listens on its internet
// address only; its intranet address stays closed.
func TestInternetModeOpensNoIntranetListener(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	s := settingsFor(p, m, t.TempDir())
	intranet, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	s.Mode, s.IntranetListen, s.IntranetURL = wire.DPModeInternet, intranet, "https://"+intranet
	r := startDP(t, s, true)
	if len(r.dp.Servers()) != 1 || r.dp.Servers()[0].Role != "dp-internet" {
		t.Fatalf("listeners: %v", r.urls)
	}
	if c, err := net.DialTimeout("tcp", intranet, time.Second); err == nil {
		c.Close()
		t.Fatalf("something listens on the intranet address %s", intranet)
	}
	sum := blob(t, r, testData(10))
	if res := curl(t, p, p.client(t, "device"), http.MethodGet, r.urls["dp-internet"]+"/v1/content/"+sum); res.status != 200 {
		t.Fatalf("internet listener: %d %v", res.status, res.err)
	}
	m.mu.Lock()
	reg := m.registered[0]
	m.mu.Unlock()
	if reg.Mode != wire.DPModeInternet || reg.IntranetURL != "" || reg.InternetURL == "" {
		t.Errorf("registration: %+v", reg)
	}
}

// TestStandaloneFromConfig: a DP runs from its own file, which has no database settings
// at all (a store key is refused as unknown), and serves.
func TestStandaloneFromConfig(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	dir := t.TempDir()
	for _, f := range []struct{ src, dst string }{{p.dpCertFile, "dp1.crt"}, {p.dpKeyFile, "dp1.key"}, {p.rootFile, "root.crt"}} {
		b, _ := os.ReadFile(f.src)
		os.WriteFile(filepath.Join(dir, f.dst), b, 0o600)
	}
	conf := fmt.Sprintf(`version: 1
dp:
  id: dp1
  mode: intranet
  intranet_listen: 127.0.0.1:0
  intranet_url: https://dp1.corp.test:8446
  tls_cert: dp1.crt
  tls_key: dp1.key
  roots: root.crt
  site_code: %s
  mp_url: %s
  library: content
  validate_interval: 1h
`, testSite, m.srv.URL)
	path := filepath.Join(dir, "dp.yaml")
	os.WriteFile(path, []byte(conf), 0o600)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DP.Library != filepath.Join(dir, "content") || cfg.DP.TLSCert != filepath.Join(dir, "dp1.crt") {
		t.Fatalf("relative paths not resolved: %+v", cfg.DP)
	}
	r := startDP(t, cfg.DP, true)
	sum := blob(t, r, testData(100))
	if res := curl(t, p, p.client(t, "device"), http.MethodGet, r.urls["dp-intranet"]+"/v1/content/"+sum); res.status != 200 {
		t.Fatalf("standalone DP: %d %v", res.status, res.err)
	}
	os.WriteFile(path, []byte(conf+"store:\n  driver: sqlite\n"), 0o600)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "store: unknown key") {
		t.Fatalf("a store key: %v", err)
	}
}

// TestNoSnapshotNoService: before the first snapshot the DP answers 503; once it has one
// it keeps it on disk (0600), and a restarted DP serves with the MP down.
func TestNoSnapshotNoService(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	m.holdFeed = true
	dir := t.TempDir()
	s := settingsFor(p, m, dir)
	r := startDP(t, s, false)
	u := r.urls["dp-intranet"] + "/v1/content/" + sha([]byte("x"))
	dev := p.client(t, "device")
	res := curl(t, p, dev, http.MethodGet, u)
	if res.status != 503 || res.headers.Get("Retry-After") == "" {
		t.Fatalf("before any snapshot: %d %v", res.status, res.headers)
	}
	r.cancel()

	m.mu.Lock()
	m.holdFeed = false
	m.snapshot.Revoked = []string{p.client(t, "device2").leaf.SerialNumber.String()}
	m.mu.Unlock()
	r = startDP(t, s, true)
	r.cancel()
	st, err := os.Stat(filepath.Join(s.Library, stateDirName, feedFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the feed state on disk: %v %v", st, err)
	}

	m.close() // the MP is down
	r = startDP(t, s, false)
	u = r.urls["dp-intranet"] + "/v1/content/" + sha([]byte("x"))
	if res := curl(t, p, dev, http.MethodGet, u); res.status != 404 {
		t.Fatalf("restarted with the MP down: %d %v %s", res.status, res.err, res.body)
	}
	if res := curl(t, p, p.client(t, "device2"), http.MethodGet, u); res.err == nil {
		t.Fatalf("a serial revoked in the saved snapshot got HTTP %d", res.status)
	}
}

// TestUploads: a user with ManageContent (as the MP says) uploads to an origin DP in two
// requests (resuming); a wrong hash is refused with 422 and its part dropped; a wrong
// offset is 409; a user without the permission, a device, and a non-origin DP are refused.
func TestUploads(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	m.allowed[p.userID] = true
	s := settingsFor(p, m, t.TempDir())
	s.Origin = true
	r := startDP(t, s, true)
	user := goClient(p, p.client(t, "user"))
	data := testData(200_000)
	sum := sha(data)
	up := r.urls["dp-intranet"] + "/v1/admin/uploads/"
	put := func(c *http.Client, sum string, offset, size int, body []byte) (int, wire.UploadState, wire.Error) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s%s?offset=%d&size=%d", up, sum, offset, size), bytes.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var st wire.UploadState
		var e wire.Error
		json.Unmarshal(b, &st)
		json.Unmarshal(b, &e)
		return resp.StatusCode, st, e
	}
	code, st, _ := put(user, sum, 0, len(data), data[:80_000])
	if code != 200 || st.Received != 80_000 || st.Complete {
		t.Fatalf("first part: %d %+v", code, st)
	}
	resp, err := user.Get(up + sum)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if resp.StatusCode != 200 || st.Received != 80_000 {
		t.Fatalf("state: %d %+v", resp.StatusCode, st)
	}
	if code, _, e := put(user, sum, 50_000, len(data), data[50_000:]); code != 409 || e.Error.Code != "upload_offset" {
		t.Fatalf("wrong offset: %d %+v", code, e)
	}
	if code, st, _ = put(user, sum, 80_000, len(data), data[80_000:]); code != 201 || !st.Complete || st.Received != int64(len(data)) {
		t.Fatalf("rest: %d %+v", code, st)
	}
	if !r.dp.Library().Has(sum) {
		t.Fatal("the uploaded blob is not in the library")
	}
	// It is served like any blob.
	if res := curl(t, p, p.client(t, "device"), http.MethodGet, r.urls["dp-intranet"]+"/v1/content/"+sum, "Range: bytes=0-9"); res.status != 206 {
		t.Fatalf("serving the upload: %d", res.status)
	}

	bad := sha([]byte("what the admin meant"))
	if code, _, e := put(user, bad, 0, 9, []byte("something")); code != 422 || e.Error.Code != "hash_mismatch" {
		t.Fatalf("wrong hash: %d %+v", code, e)
	}
	if _, err := os.Stat(r.dp.Library().Path(bad) + ".part"); !errors.Is(err, os.ErrNotExist) || r.dp.Library().Has(bad) {
		t.Fatalf("after a wrong hash: part %v", err)
	}
	if code, _, _ := put(user, bad, 0, 3, []byte("toolong")); code != 413 {
		t.Fatalf("a body longer than size: %d", code)
	}
	if code, _, e := put(goClient(p, p.client(t, "user2")), sha([]byte("b")), 0, 1, []byte("b")); code != 403 || e.Error.Code != "forbidden" {
		t.Fatalf("a user without ManageContent: %d %+v", code, e)
	}
	if code, _, e := put(goClient(p, p.client(t, "device")), sha([]byte("b")), 0, 1, []byte("b")); code != 403 || e.Error.Code != "not_a_user" {
		t.Fatalf("a device: %d %+v", code, e)
	}
	for _, q := range []string{"offset=x&size=1", "offset=2&size=1", "offset=-1&size=1", "size=1"} {
		req, _ := http.NewRequest(http.MethodPut, up+sha([]byte("b"))+"?"+q, strings.NewReader("b"))
		resp, err := user.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("?%s: %d", q, resp.StatusCode)
		}
	}
	m.mu.Lock()
	a := m.authorized[0]
	m.mu.Unlock()
	if a.User != p.userID || a.Serial != p.client(t, "user").leaf.SerialNumber.String() || a.Permission != "ManageContent" {
		t.Errorf("asked the MP %+v", a)
	}

	// A DP that is not origin takes no uploads.
	s2 := settingsFor(p, m, t.TempDir())
	r2 := startDP(t, s2, true)
	up = r2.urls["dp-intranet"] + "/v1/admin/uploads/"
	if code, _, e := put(user, sum, 0, len(data), data); code != 404 || e.Error.Code != "not_origin" {
		t.Fatalf("upload to a non-origin DP: %d %+v", code, e)
	}
}

// TestAssignmentsManifestsAndState: the DP serves the signed manifests of what is assigned
// to it, refuses one whose signature does not verify, and reports each package's state.
func TestAssignmentsManifestsAndState(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	file := testData(100_000)
	good := p.sign(t, "tool", "1.0", map[string][]byte{"bin/tool": file})
	forged := p.sign(t, "other", "2.0", map[string][]byte{"x": []byte("x")})
	forged.ManifestSHA256 = sha([]byte("not the manifest"))
	m.assignments = wire.DPAssignments{Packages: []wire.DPPackage{good, forged}}
	s := settingsFor(p, m, t.TempDir())
	s.Origin = true
	lib, err := library.Open(s.Library)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lib.Put(sha(file), bytes.NewReader(file)); err != nil {
		t.Fatal(err)
	}
	r := startDP(t, s, true)
	dev := goClient(p, p.client(t, "device"))
	var resp *http.Response
	deadline := time.Now().Add(5 * time.Second)
	for { // the assignments are fetched after the feed opened
		resp, err = dev.Get(r.urls["dp-intranet"] + "/v1/manifests/tool/1.0")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == 200 || time.Now().After(deadline) {
			break
		}
		resp.Body.Close()
		<-m.reported // the DP reports after each assignments answer
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(b, good.Manifest) {
		t.Fatalf("manifest: %d %s", resp.StatusCode, b)
	}
	for _, path := range []string{"/v1/manifests/other/2.0", "/v1/manifests/tool/9.9"} {
		resp, err := dev.Get(r.urls["dp-intranet"] + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	// The latest report: tool ready (its blob is here), other failed.
	want := map[string]string{"tool": wire.DPReady, "other": wire.DPFailed}
	for time.Now().Before(deadline) {
		m.mu.Lock()
		var last wire.DPStateReport
		if len(m.states) > 0 {
			last = m.states[len(m.states)-1]
		}
		m.mu.Unlock()
		ok := len(last.Packages) == 2
		for _, st := range last.Packages {
			ok = ok && want[st.Name] == st.State
		}
		if ok {
			return
		}
		select {
		case <-m.reported:
		case <-time.After(2 * time.Second):
		}
	}
	t.Fatalf("the DP did not report tool ready and other failed: %+v", m.states)
}

// TestValidateQuarantinesAndReports: scheduled validation (run here directly) quarantines a
// blob whose bytes changed on disk.
func TestValidateQuarantines(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	r := startDP(t, settingsFor(p, m, t.TempDir()), true)
	sum := blob(t, r, testData(1000))
	os.WriteFile(r.dp.Library().Path(sum), testData(999), 0o644)
	if bad := r.dp.Validate(context.Background()); len(bad) != 1 || bad[0] != sum {
		t.Fatalf("Validate = %v", bad)
	}
	if r.dp.Library().Has(sum) {
		t.Fatal("the bad blob is still served")
	}
}

func TestNewRefusesAWrongID(t *testing.T) {
	p := newPKI(t)
	s := settingsFor(p, nil, t.TempDir())
	s.ID = "dp2"
	_, err := New(Options{Settings: s, Log: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), `common name of dp.tls_cert is "dp1"`) {
		t.Fatalf("New with an id that is not the certificate's name: %v", err)
	}
}

// TestServe: Serve prints one line per listener once it accepts connections, serves, and
// returns cleanly when its context ends.
func TestServe(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	s := settingsFor(p, m, t.TempDir())
	s.Mode = wire.DPModeBoth
	d, err := New(Options{Settings: s, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, pw); pw.Close() }()
	sc := bufio.NewScanner(pr)
	var lines []string
	for len(lines) < 2 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	go io.Copy(io.Discard, pr)
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "dp-intranet") || !strings.HasPrefix(lines[1], "dp-internet") || !strings.Contains(lines[0], "listening on 127.0.0.1:") {
		t.Fatalf("Serve printed %q", lines)
	}
	addr := lines[0][strings.LastIndex(lines[0], " ")+1 : len(lines[0])-1]
	resp, err := goClient(p, p.client(t, "device")).Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestCollect: once the MP said what is assigned, blobs no package references are removed
// after the grace period; referenced and young ones stay; before, nothing is removed.
func TestCollect(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	file := testData(1000)
	m.assignments = wire.DPAssignments{Packages: []wire.DPPackage{p.sign(t, "tool", "1.0", map[string][]byte{"f": file})}}
	s := settingsFor(p, m, t.TempDir())
	s.Origin = true
	d, err := New(Options{Settings: s, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	lib := d.Library()
	old := time.Now().Add(-48 * time.Hour)
	put := func(b []byte, mt time.Time) string {
		sum := sha(b)
		if _, err := lib.Put(sum, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(lib.Path(sum), mt, mt)
		return sum
	}
	referenced, orphan, young := put(file, old), put([]byte("orphan"), old), put([]byte("just uploaded"), time.Now())
	if removed := d.Collect(context.Background()); len(removed) != 0 {
		t.Fatalf("collected %v before hearing the assignments", removed)
	}
	if err := d.fetchAssignments(context.Background()); err != nil {
		t.Fatal(err)
	}
	if removed := d.Collect(context.Background()); len(removed) != 1 || removed[0] != orphan {
		t.Fatalf("collected %v, want only %s", removed, orphan)
	}
	if !lib.Has(referenced) || !lib.Has(young) {
		t.Fatal("a referenced or young blob was collected")
	}
}
