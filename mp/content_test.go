package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// dpCert issues DP id's site-server certificate (role dp; its common name is its id).
func (f *fixture) dpCert(t testing.TB, id string) tls.Certificate {
	return f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: id, DNS: []string{"127.0.0.1"}, Role: "dp"})
}

// signed has the fixture's CA sign a manifest of one file of package name, version.
func (f *fixture) signed(t testing.TB, name, version, fileHash string) wire.SignedManifest {
	t.Helper()
	m := &wire.Manifest{Name: name, Version: version, ChunkSize: manifest.MinChunkSize, Created: time.Now().UTC().Truncate(time.Second),
		Files:   []wire.ManifestFile{{Path: "bin/" + name, Size: 10, Mode: 0o755, SHA256: fileHash, Chunks: []string{fileHash}}},
		Install: &wire.InstallSpec{Command: "./bin/" + name, Timeout: "1m"}}
	sm, err := f.ca.SignManifest(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return *sm
}

func hashOf(c byte) string { return strings.Repeat(string([]byte{c}), 64) }

func register(t testing.TB, f *fixture, c *http.Client, reg wire.DPRegistration) {
	t.Helper()
	if st, e := call(t, c, "POST", f.intranet+"/v1/dp/register", reg, nil); st != 200 {
		t.Fatalf("register %s: HTTP %d %+v", reg.ID, st, e.Error)
	}
}

var dpRoutes = []struct{ method, path, body string }{
	{"POST", "/v1/dp/register", `{"id":"dp1","mode":"intranet","intranet_url":"https://dp1.corp.test:8446","priority":1}`},
	{"GET", "/v1/dp/feed", ""},
	{"GET", "/v1/dp/assignments", ""},
	{"POST", "/v1/dp/state", `{"packages":[]}`},
	{"POST", "/v1/dp/authorize", `{"user":"carol","serial":"12","permission":"ManageContent"}`},
}

// Only a DP certificate of this site reaches /v1/dp/*, and only under its own id.
func TestDPRoutesOnlyForDPs(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	user := f.user(t, "root", access.FullAdministrator)
	mpCert := f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp2", DNS: []string{"127.0.0.1"}, Role: "mp"})
	dp1 := f.dpCert(t, "dp1")
	// A DP certificate naming another site (signed by this site's CA all the same).
	foreign := handmade(t, &x509.Certificate{Subject: pkix.Name{CommonName: "dp1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{{Scheme: "urn", Opaque: "ibcm:site:OTH:role:dp"}}})
	for name, cert := range map[string]tls.Certificate{"device": pc, "user": user, "mp": mpCert, "other site's dp": foreign} {
		c := f.client(&cert)
		for _, r := range dpRoutes {
			var body any
			if r.body != "" {
				body = r.body
			}
			if st, e := call(t, c, r.method, f.intranet+r.path, body, nil); st != http.StatusForbidden || e.Error.Code != "not_a_dp" {
				t.Errorf("%s: %s %s: HTTP %d %q, want 403 not_a_dp", name, r.method, r.path, st, e.Error.Code)
			}
		}
	}
	c := f.client(&dp1)
	if st, e := call(t, c, "POST", f.intranet+"/v1/dp/register", wire.DPRegistration{ID: "dp2", Mode: "intranet", IntranetURL: "https://dp2.corp.test"}, nil); st != http.StatusForbidden || e.Error.Code != "dp_id_mismatch" {
		t.Errorf("dp1 registering as dp2: HTTP %d %q, want 403 dp_id_mismatch", st, e.Error.Code)
	}
	// Before it registers, a DP has no assignments.
	if st, e := call(t, c, "GET", f.intranet+"/v1/dp/assignments", nil, nil); st != http.StatusNotFound || e.Error.Code != "dp_not_registered" {
		t.Errorf("assignments before registering: HTTP %d %q", st, e.Error.Code)
	}
	for _, tc := range []struct{ name, body string }{
		{"bad mode", `{"id":"dp1","mode":"everywhere","intranet_url":"https://dp1.corp.test"}`},
		{"http URL", `{"id":"dp1","mode":"intranet","intranet_url":"http://dp1.corp.test"}`},
		{"URL with a path", `{"id":"dp1","mode":"intranet","intranet_url":"https://dp1.corp.test/x"}`},
		{"no intranet URL", `{"id":"dp1","mode":"intranet"}`},
		{"internet URL in intranet mode", `{"id":"dp1","mode":"intranet","intranet_url":"https://a.test","internet_url":"https://b.test"}`},
		{"no internet URL", `{"id":"dp1","mode":"both","intranet_url":"https://a.test"}`},
		{"negative priority", `{"id":"dp1","mode":"intranet","intranet_url":"https://a.test","priority":-1}`},
		{"unknown field", `{"id":"dp1","mode":"intranet","intranet_url":"https://a.test","token":"x"}`},
		{"not JSON", `{"id":`},
		{"control character in version", `{"id":"dp1","mode":"intranet","intranet_url":"https://a.test","version":"1\n2"}`},
	} {
		if st, e := call(t, c, "POST", f.intranet+"/v1/dp/register", tc.body, nil); st != http.StatusBadRequest {
			t.Errorf("register, %s: HTTP %d %q, want 400", tc.name, st, e.Error.Code)
		}
	}
}

// The admin API takes a package version signed by the site's content signer only; the
// origin DP is given every version, another DP what is distributed to it; each reports
// its state, which `ibcm dp list` and `content show` read back.
func TestContentAndDistribution(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		f := newFixture(t, db, Options{OriginDPs: []string{"dp1"}})
		admin := f.client(ptr(f.user(t, "carol", access.ContentAdministrator)))
		helpdesk := f.client(ptr(f.user(t, "hank", access.HelpDeskOperator)))
		dp1, dp2 := f.client(ptr(f.dpCert(t, "dp1"))), f.client(ptr(f.dpCert(t, "dp2")))
		register(t, f, dp1, wire.DPRegistration{ID: "dp1", Mode: "both", IntranetURL: "https://dp1.corp.test:8446", InternetURL: "https://dp1.example.test", Priority: 5, Origin: true})
		// dp2 may not make itself an origin (the upload target and everyone's pull source).
		if st, e := call(t, dp2, "POST", f.intranet+"/v1/dp/register", wire.DPRegistration{ID: "dp2", Mode: "intranet", IntranetURL: "https://dp2.corp.test:8446", Origin: true}, nil); st != http.StatusForbidden || e.Error.Code != "origin_not_allowed" {
			t.Fatalf("dp2 registering as origin: HTTP %d %q, want 403 origin_not_allowed", st, e.Error.Code)
		}
		register(t, f, dp2, wire.DPRegistration{ID: "dp2", Mode: "intranet", IntranetURL: "https://dp2.corp.test:8446/", Priority: 1})

		sm := f.signed(t, "tool", "1.0", hashOf('a'))
		var cv wire.ContentVersion
		if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/content", sm, &cv); st != http.StatusCreated {
			t.Fatalf("content add: HTTP %d %+v", st, e.Error)
		}
		if cv.ManifestSHA256 != manifest.Hash(sm.Manifest) || cv.Size != 10 || cv.AddedBy != "carol" || len(cv.Files) != 1 || cv.Install == nil {
			t.Fatalf("content add answered %+v", cv)
		}
		if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content", sm, &cv); st != http.StatusOK {
			t.Errorf("the same signed manifest again: HTTP %d, want 200", st)
		}
		if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/content", f.signed(t, "tool", "1.0", hashOf('b')), nil); st != http.StatusConflict || e.Error.Code != "content_exists" {
			t.Errorf("another manifest under the same version: HTTP %d %q, want 409 content_exists", st, e.Error.Code)
		}
		flipped := f.signed(t, "tool", "2.0", hashOf('c'))
		flipped.Signature[len(flipped.Signature)/2] ^= 1
		// Signed with a key of the site that is not the content signer (an MP's).
		mpKey := f.mp.o.SiteKey
		bySite, err := manifest.Sign(&wire.Manifest{Name: "tool", Version: "3.0", ChunkSize: manifest.MinChunkSize, Created: time.Now(),
			Files: []wire.ManifestFile{{Path: "x", Size: 1, SHA256: hashOf('d'), Chunks: []string{hashOf('d')}}}}, mpKey, f.mp.o.SiteChain)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			body   any
			status int
			code   string
		}{
			{"signature flipped", flipped, 400, "manifest_not_signed"},
			{"signed by the MP", bySite, 400, "manifest_not_signed"},
			{"not JSON", `{"manifest":`, 400, "invalid_manifest"},
			{"unknown field", `{"manifest":"eA==","signature":"eA==","chain":["eA=="],"x":1}`, 400, "invalid_manifest"},
			{"too large", `{"manifest":"` + strings.Repeat("A", manifest.MaxSigned+8) + `"}`, 413, "too_large"},
		} {
			if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/content", tc.body, nil); st != tc.status || e.Error.Code != tc.code {
				t.Errorf("content add, %s: HTTP %d %q, want %d %s", tc.name, st, e.Error.Code, tc.status, tc.code)
			}
		}
		if st, _ := call(t, helpdesk, "GET", f.intranet+"/v1/admin/content", nil, nil); st != http.StatusForbidden {
			t.Errorf("content list without ManageContent: HTTP %d", st)
		}
		if st, _ := call(t, helpdesk, "GET", f.intranet+"/v1/admin/dps", nil, nil); st != http.StatusForbidden {
			t.Errorf("dp list without ManageContent: HTTP %d", st)
		}

		var a wire.DPAssignments
		if st, _ := call(t, dp1, "GET", f.intranet+"/v1/dp/assignments", nil, &a); st != 200 || len(a.Packages) != 1 || a.Packages[0].ManifestSHA256 != cv.ManifestSHA256 || len(a.DPs) != 2 {
			t.Fatalf("the origin's assignments: %+v", a)
		}
		got, err := manifest.ParseSigned(a.Packages[0].Manifest)
		if err != nil || string(got.Manifest) != string(sm.Manifest) {
			t.Fatalf("the assigned manifest: %v", err)
		}
		if st, _ := call(t, dp2, "GET", f.intranet+"/v1/dp/assignments", nil, &a); st != 200 || len(a.Packages) != 0 {
			t.Fatalf("dp2's assignments before distribution: %+v", a)
		}
		if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/content/tool/1.0/distribute", wire.ContentDistribute{DPs: []string{"dp9"}}, nil); st != 404 || e.Error.Code != "unknown_dp" {
			t.Errorf("distribute to an unknown DP: HTTP %d %q", st, e.Error.Code)
		}
		if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content/tool/9.9/distribute", wire.ContentDistribute{DPs: []string{"dp2"}}, nil); st != 404 {
			t.Errorf("distribute an unknown version: HTTP %d", st)
		}
		if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content/Tool!/1.0/distribute", wire.ContentDistribute{}, nil); st != 400 {
			t.Errorf("distribute a bad name: HTTP %d", st)
		}
		many := make([]string, maxDistributeDPs+1)
		for i := range many {
			many[i] = fmt.Sprintf("dp%d", i)
		}
		for _, tc := range []struct {
			name, path string
			body       any
		}{
			{"a bad DP id", "/v1/admin/content/tool/1.0/distribute", `{"dps":["dp 2"]}`},
			{"too many DPs", "/v1/admin/content/tool/1.0/distribute", wire.ContentDistribute{DPs: many}},
			{"unknown field", "/v1/admin/content/tool/1.0/distribute", `{"dps":[],"all":true}`},
			{"a bad version", "/v1/admin/content/tool/1.0%20beta/distribute", `{}`},
		} {
			if st, _ := call(t, admin, "POST", f.intranet+tc.path, tc.body, nil); st != 400 {
				t.Errorf("distribute, %s: HTTP %d, want 400", tc.name, st)
			}
		}
		if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/content/tool/1.0~", nil, nil); st != 404 {
			t.Errorf("show an unknown version: HTTP %d, want 404", st)
		}
		if st, _ := call(t, admin, "DELETE", f.intranet+"/v1/admin/content/tool/9", nil, nil); st != 404 {
			t.Errorf("remove an unknown version: HTTP %d, want 404", st)
		}
		if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/content/tool/1.0/distribute", wire.ContentDistribute{DPs: []string{"dp2"}}, &cv); st != 200 {
			t.Fatalf("distribute: HTTP %d %+v", st, e.Error)
		}
		if len(cv.DPs) != 2 || cv.DPs[0].Name != "dp1" || cv.DPs[1].State != wire.DPPending {
			t.Errorf("after distribution: %+v", cv.DPs)
		}
		if st, _ := call(t, dp2, "GET", f.intranet+"/v1/dp/assignments", nil, &a); st != 200 || len(a.Packages) != 1 {
			t.Fatalf("dp2's assignments after distribution: %+v", a)
		}
		// Distributed with no DP named: to every DP, those that register later too.
		if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content", f.signed(t, "tool", "2.0", hashOf('e')), nil); st != 201 {
			t.Fatal("content add 2.0")
		}
		if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/content/tool/2.0/distribute", nil, nil); st != 200 {
			t.Fatalf("distribute to every DP: HTTP %d %+v", st, e.Error)
		}
		dp3 := f.client(ptr(f.dpCert(t, "dp3")))
		register(t, f, dp3, wire.DPRegistration{ID: "dp3", Mode: "internet", InternetURL: "https://dp3.example.test"})
		if st, _ := call(t, dp3, "GET", f.intranet+"/v1/dp/assignments", nil, &a); st != 200 || len(a.Packages) != 1 || a.Packages[0].Version != "2.0" || len(a.DPs) != 3 {
			t.Fatalf("a DP registered after a distribution to every DP: %+v", a)
		}
		if st, _ := call(t, admin, "DELETE", f.intranet+"/v1/admin/content/tool/2.0", nil, nil); st != http.StatusNoContent {
			t.Fatal("content remove 2.0")
		}

		report := wire.DPStateReport{Packages: []wire.DPPackageState{{Name: "tool", Version: "1.0", State: wire.DPSyncing, Percent: 40, Updated: time.Now()},
			{Name: "gone", Version: "1", State: wire.DPReady, Updated: time.Now()}}}
		if st, e := call(t, dp2, "POST", f.intranet+"/v1/dp/state", report, nil); st != http.StatusNoContent {
			t.Fatalf("state: HTTP %d %+v", st, e.Error)
		}
		older := wire.DPStateReport{Packages: []wire.DPPackageState{{Name: "tool", Version: "1.0", State: wire.DPPending, Updated: time.Now().Add(-time.Hour)}}}
		call(t, dp2, "POST", f.intranet+"/v1/dp/state", older, nil) // older than what is stored: ignored
		for _, tc := range []struct{ name, body string }{
			{"bad state", `{"packages":[{"name":"tool","version":"1.0","state":"done","percent":0,"updated":"2026-01-01T00:00:00Z"}]}`},
			{"percent 101", `{"packages":[{"name":"tool","version":"1.0","state":"syncing","percent":101,"updated":"2026-01-01T00:00:00Z"}]}`},
			{"bad name", `{"packages":[{"name":"../x","version":"1.0","state":"ready","percent":0,"updated":"2026-01-01T00:00:00Z"}]}`},
			{"future", `{"packages":[{"name":"tool","version":"1.0","state":"ready","percent":0,"updated":"2999-01-01T00:00:00Z"}]}`},
			{"unknown field", `{"packages":[],"x":1}`},
			{"trailing data", `{"packages":[]} {}`},
		} {
			if st, e := call(t, dp2, "POST", f.intranet+"/v1/dp/state", tc.body, nil); st != http.StatusBadRequest {
				t.Errorf("state, %s: HTTP %d %q, want 400", tc.name, st, e.Error.Code)
			}
		}
		var dps []wire.DPInfo
		if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/dps", nil, &dps); st != 200 || len(dps) != 3 {
			t.Fatalf("dp list: %+v", dps)
		}
		if d := dps[1]; d.ID != "dp2" || !d.Online || len(d.Packages) != 1 || d.Packages[0].State != wire.DPSyncing || d.Packages[0].Percent != 40 {
			t.Errorf("dp2 in the list: %+v", d)
		}
		if d := dps[0]; d.ID != "dp1" || !d.Origin || len(d.Packages) != 1 || d.Packages[0].State != wire.DPPending {
			t.Errorf("dp1 in the list: %+v", d)
		}
		var list []wire.ContentVersion
		if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/content", nil, &list); st != 200 || len(list) != 1 || list[0].Name != "tool" || list[0].Install == nil || len(list[0].Files) != 0 {
			t.Errorf("content list: %+v", list)
		}
		if st, _ := call(t, admin, "DELETE", f.intranet+"/v1/admin/content/tool/1.0", nil, nil); st != http.StatusNoContent {
			t.Errorf("content remove: HTTP %d", st)
		}
		if st, _ := call(t, dp2, "GET", f.intranet+"/v1/dp/assignments", nil, &a); st != 200 || len(a.Packages) != 0 {
			t.Errorf("dp2's assignments after removal: %+v", a)
		}
		if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/content/tool/1.0", nil, nil); st != 404 {
			t.Errorf("content show after removal: HTTP %d", st)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// feed reads a DP feed line by line.
type feed struct {
	resp *http.Response
	sc   *bufio.Scanner
	ch   chan wire.DPEvent
}

func openFeed(t testing.TB, f *fixture, c *http.Client) *feed {
	t.Helper()
	resp, err := c.Get(f.intranet + "/v1/dp/feed")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		t.Fatalf("feed: HTTP %d", resp.StatusCode)
	}
	fd := &feed{resp: resp, sc: bufio.NewScanner(resp.Body), ch: make(chan wire.DPEvent, 100)}
	fd.sc.Buffer(nil, wire.MaxDPEventLine)
	go func() {
		defer close(fd.ch)
		for fd.sc.Scan() {
			var ev wire.DPEvent
			if json.Unmarshal(fd.sc.Bytes(), &ev) == nil {
				fd.ch <- ev
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return fd
}

// next waits for the next event of type typ (skipping others, pings unless asked for).
func (fd *feed) next(t testing.TB, typ string) wire.DPEvent {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-fd.ch:
			if !ok {
				t.Fatalf("the feed ended waiting for %s", typ)
			}
			if ev.Type == typ {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within 5 s", typ)
		}
	}
}

// The feed starts with every revoked serial and blocked device, then carries each
// revocation, block, unblock and assignment change as it happens, and pings.
func TestDPFeed(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{DPPingInterval: 100 * time.Millisecond, OriginDPs: []string{"dp1"}})
	ctx := context.Background()
	old := f.device(t, "old")
	if err := f.ca.Revoke(ctx, old.Leaf.SerialNumber.String(), "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	pc := f.device(t, "pc-1")
	c := f.client(&pc)
	if st, _ := call(t, c, "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 { // registers the device
		t.Fatal("whoami")
	}
	dpc := f.client(ptr(f.dpCert(t, "dp1")))
	register(t, f, dpc, wire.DPRegistration{ID: "dp1", Mode: "intranet", IntranetURL: "https://dp1.corp.test", Origin: true})
	// The revocation reaches the MP's revoked set before the feed opens.
	for deadline := time.Now().Add(5 * time.Second); !f.mp.isRevoked(old.Leaf.SerialNumber); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the revocation never reached the MP")
		}
	}
	fd := openFeed(t, f, dpc)
	snap := fd.next(t, wire.DPEventSnapshot)
	if len(snap.Revoked) != 1 || snap.Revoked[0] != old.Leaf.SerialNumber.String() || len(snap.Blocked) != 0 {
		t.Fatalf("snapshot: %+v", snap)
	}
	fd.next(t, wire.DPEventPing)

	other := f.device(t, "pc-2")
	if err := f.ca.Revoke(ctx, other.Leaf.SerialNumber.String(), "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if ev := fd.next(t, wire.DPEventRevoked); ev.Serial != other.Leaf.SerialNumber.String() {
		t.Fatalf("revoked event: %+v", ev)
	}
	if _, err := f.mp.Block(ctx, deviceID(pc), true); err != nil {
		t.Fatal(err)
	}
	if ev := fd.next(t, wire.DPEventBlocked); ev.Device != deviceID(pc) {
		t.Fatalf("blocked event: %+v", ev)
	}
	if _, err := f.mp.Block(ctx, deviceID(pc), false); err != nil {
		t.Fatal(err)
	}
	if ev := fd.next(t, wire.DPEventUnblocked); ev.Device != deviceID(pc) {
		t.Fatalf("unblocked event: %+v", ev)
	}
	admin := f.client(ptr(f.user(t, "carol", access.ContentAdministrator)))
	if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content", f.signed(t, "tool", "1", hashOf('a')), nil); st != 201 {
		t.Fatal("content add")
	}
	fd.next(t, wire.DPEventAssignments)

	// A second feed of the same DP sees the blocked set again (now empty) and the revoked.
	fd2 := openFeed(t, f, dpc)
	if snap := fd2.next(t, wire.DPEventSnapshot); len(snap.Revoked) != 2 {
		t.Fatalf("second snapshot: %+v", snap)
	}
	// One DP id holds at most maxFeedsPerDP feeds on one MP.
	for i := 2; i < maxFeedsPerDP; i++ {
		openFeed(t, f, f.client(ptr(f.dpCert(t, "dp1"))))
	}
	if st, e := call(t, dpc, "GET", f.intranet+"/v1/dp/feed", nil, nil); st != http.StatusTooManyRequests || e.Error.Code != "too_many_feeds" {
		t.Errorf("feed beyond the per-DP bound: HTTP %d %q", st, e.Error.Code)
	}
}

// The feed is bounded per MP, and its slots are apart from the request slots.
func TestDPFeedBounds(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{MaxDPFeeds: 1, MaxInFlight: 1})
	dpc := f.client(ptr(f.dpCert(t, "dp1")))
	fd := openFeed(t, f, dpc)
	fd.next(t, wire.DPEventSnapshot)
	// The open feed holds no request slot: an ordinary request still goes through.
	if st, _ := call(t, dpc, "POST", f.intranet+"/v1/dp/register", wire.DPRegistration{ID: "dp1", Mode: "intranet", IntranetURL: "https://dp1.corp.test"}, nil); st != 200 {
		t.Errorf("a request beside an open feed: HTTP %d", st)
	}
	other := f.client(ptr(f.dpCert(t, "dp2")))
	if st, e := call(t, other, "GET", f.intranet+"/v1/dp/feed", nil, nil); st != http.StatusServiceUnavailable || e.Error.Code != "overloaded" {
		t.Errorf("a feed beyond the MP's bound: HTTP %d %q", st, e.Error.Code)
	}
}

// A DP asks whether an uploading user holds ManageContent now.
func TestDPAuthorize(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	carol := f.user(t, "carol", access.ContentAdministrator)
	hank := f.user(t, "hank", access.HelpDeskOperator)
	dpc := f.client(ptr(f.dpCert(t, "dp1")))
	ask := func(user string, serial fmt.Stringer, perm string) (int, string) {
		st, e := call(t, dpc, "POST", f.intranet+"/v1/dp/authorize", wire.DPAuthorize{User: user, Serial: serial.String(), Permission: perm}, nil)
		return st, e.Error.Code
	}
	if st, code := ask("carol", carol.Leaf.SerialNumber, "ManageContent"); st != http.StatusNoContent {
		t.Errorf("carol: HTTP %d %q, want 204", st, code)
	}
	if st, code := ask("hank", hank.Leaf.SerialNumber, "ManageContent"); st != http.StatusForbidden || code != "forbidden" {
		t.Errorf("hank: HTTP %d %q, want 403", st, code)
	}
	if st, _ := ask("nobody", hank.Leaf.SerialNumber, "ManageContent"); st != http.StatusForbidden {
		t.Errorf("an unknown user: HTTP %d, want 403", st)
	}
	if st, _ := ask("carol", carol.Leaf.SerialNumber, "Everything"); st != http.StatusBadRequest {
		t.Errorf("an unknown permission: HTTP %d, want 400", st)
	}
	if st, _ := call(t, dpc, "POST", f.intranet+"/v1/dp/authorize", `{"user":"carol","serial":"x1","permission":"ManageContent"}`, nil); st != http.StatusBadRequest {
		t.Errorf("a bad serial: HTTP %d, want 400", st)
	}
	if err := f.ca.Access().SetDisabled(context.Background(), "carol", true); err != nil {
		t.Fatal(err)
	}
	if st, _ := ask("carol", carol.Leaf.SerialNumber, "ManageContent"); st != http.StatusForbidden {
		t.Errorf("a disabled user: HTTP %d, want 403", st)
	}
}

// GET /v1/locate lists the live DPs of the caller's location, lower priority first.
func TestLocateDPs(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	for _, reg := range []wire.DPRegistration{
		{ID: "dp1", Mode: "intranet", IntranetURL: "https://dp1.corp.test", Priority: 5},
		{ID: "dp2", Mode: "both", IntranetURL: "https://dp2.corp.test", InternetURL: "https://dp2.example.test", Priority: 1},
		{ID: "dp3", Mode: "internet", InternetURL: "https://dp3.example.test", Priority: 9},
		{ID: "dp4", Mode: "intranet", IntranetURL: "https://dp4.corp.test", Priority: 0},
	} {
		register(t, f, f.client(ptr(f.dpCert(t, reg.ID))), reg)
	}
	// dp4 went silent long ago.
	if _, err := f.db.Exec(context.Background(), `UPDATE dps SET last_seen = ? WHERE id = 'dp4'`, time.Now().Add(-time.Hour).Unix()); err != nil {
		t.Fatal(err)
	}
	pc := f.device(t, "pc-1")
	c := f.client(&pc)
	var loc wire.Locate
	if st, _ := call(t, c, "GET", f.intranet+"/v1/locate", nil, &loc); st != 200 || strings.Join(loc.DPs, " ") != "https://dp2.corp.test https://dp1.corp.test" {
		t.Errorf("intranet locate: %+v", loc)
	}
	if st, _ := call(t, c, "GET", f.internet+"/v1/locate", nil, &loc); st != 200 || strings.Join(loc.DPs, " ") != "https://dp2.example.test https://dp3.example.test" {
		t.Errorf("internet locate: %+v", loc)
	}
}

// A deployment reaches its group's members through their policy (and a policy-changed
// event), counts them by their reported state, is refused out of the user's scope, and
// keeps its content from removal.
func TestDeployments(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		f := newFixture(t, db, Options{})
		ctx := context.Background()
		admin := f.client(ptr(f.user(t, "carol", access.ContentAdministrator)))
		// dora manages content over the group "other" only.
		dora := f.user(t, "dora", "")
		if err := f.ca.Access().Assign(ctx, "dora", access.ContentAdministrator, []string{"other"}, "test"); err != nil {
			t.Fatal(err)
		}
		doraC := f.client(&dora)
		hank := f.client(ptr(f.user(t, "hank", access.HelpDeskOperator)))
		pc1, pc2 := f.device(t, "pc-1"), f.device(t, "pc-2")
		c1, c2 := f.client(&pc1), f.client(&pc2)
		for _, c := range []*http.Client{c1, c2} {
			if st, _ := call(t, c, "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
				t.Fatal("whoami")
			}
		}
		for _, g := range []string{"lab", "other"} {
			if err := f.mp.CreateGroup(ctx, wire.Group{Name: g}); err != nil {
				t.Fatal(err)
			}
		}
		for _, pc := range []tls.Certificate{pc1, pc2} {
			if err := f.mp.SetMember(ctx, "lab", deviceID(pc), true); err != nil {
				t.Fatal(err)
			}
		}
		sm := f.signed(t, "tool", "1.0", hashOf('a'))
		if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content", sm, nil); st != 201 {
			t.Fatal("content add")
		}
		var pol wire.Policy
		req, _ := http.NewRequest("GET", f.intranet+"/v1/policy", nil)
		resp, err := c1.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tag := resp.Header.Get("ETag")
		ws := dialNotify(t, f, &pc1)
		waitConnected(t, f.mp, deviceID(pc1), 1)

		for _, tc := range []struct {
			name   string
			c      *http.Client
			body   string
			status int
			code   string
		}{
			{"no such group", admin, `{"package":"tool","version":"1.0","group":"nope"}`, 404, "not_found"},
			{"out of scope", doraC, `{"package":"tool","version":"1.0","group":"lab"}`, 404, "not_found"},
			{"no ManageContent", hank, `{"package":"tool","version":"1.0","group":"lab"}`, 403, "forbidden"},
			{"no such version", admin, `{"package":"tool","version":"2.0","group":"lab"}`, 404, "not_found"},
			{"bad name", admin, `{"package":"../tool","version":"1.0","group":"lab"}`, 400, "bad_request"},
			{"unknown field", admin, `{"package":"tool","version":"1.0","group":"lab","force":true}`, 400, "bad_request"},
		} {
			if st, e := call(t, tc.c, "POST", f.intranet+"/v1/admin/deployments", tc.body, nil); st != tc.status || e.Error.Code != tc.code {
				t.Errorf("deploy create, %s: HTTP %d %q, want %d %s", tc.name, st, e.Error.Code, tc.status, tc.code)
			}
		}
		var d wire.DeploymentInfo
		if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/deployments", wire.DeploymentCreate{Package: "tool", Version: "1.0", Group: "lab", Install: true}, &d); st != http.StatusCreated {
			t.Fatalf("deploy create: HTTP %d %+v", st, e.Error)
		}
		if d.ManifestSHA256 != manifest.Hash(sm.Manifest) || d.Counts[wire.DeployPending] != 2 || d.CreatedBy != "carol" {
			t.Fatalf("deploy create answered %+v", d)
		}
		if ev := nextEvent(t, ws); ev.Type != wire.EventPolicyChanged {
			t.Fatalf("event after deploy create: %+v", ev)
		}
		req.Header.Set("If-None-Match", tag)
		resp, err = c1.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&pol)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(pol.Deployments) != 1 || pol.Deployments[0] != (wire.Deployment{ID: d.ID, Package: "tool", Version: "1.0", ManifestSHA256: d.ManifestSHA256, Install: true}) {
			t.Fatalf("policy after deploy create: HTTP %d %+v", resp.StatusCode, pol.Deployments)
		}
		if st, e := call(t, admin, "DELETE", f.intranet+"/v1/admin/content/tool/1.0", nil, nil); st != http.StatusConflict || e.Error.Code != "deployment_uses_content" {
			t.Errorf("content remove while deployed: HTTP %d %q", st, e.Error.Code)
		}

		status := func(c *http.Client, id string, at time.Time, fields map[string]string) (int, string) {
			b := wire.StatusBatch{Messages: []wire.StatusMessage{{ID: id, Time: at, Severity: "info", Component: wire.DeploymentComponent, Text: "deployment", Fields: fields}}}
			st, e := call(t, c, "POST", f.intranet+"/v1/status", b, nil)
			return st, e.Error.Code
		}
		now := time.Now()
		if st, code := status(c1, "m1", now, map[string]string{"deployment_id": d.ID, "state": "downloading", "percent": "50", "dp": "dp1"}); st != 200 {
			t.Fatalf("status: HTTP %d %s", st, code)
		}
		status(c2, "m2", now, map[string]string{"deployment_id": d.ID, "state": "failed", "exit_code": "3", "error": "exit code 3"})
		status(c1, "m3", now.Add(time.Second), map[string]string{"deployment_id": d.ID, "state": "installed", "exit_code": "0"})
		status(c1, "m4", now.Add(-time.Second), map[string]string{"deployment_id": d.ID, "state": "downloading", "percent": "10"}) // older: ignored
		status(c1, "m5", now, map[string]string{"deployment_id": "0123456789abcdef", "state": "installed"})                        // unknown: ignored
		for _, fields := range []map[string]string{
			{"deployment_id": d.ID, "state": "done"},
			{"deployment_id": d.ID, "state": "downloading", "percent": "101"},
			{"deployment_id": d.ID, "state": "failed", "exit_code": "x"},
			{"state": "installed"},
			{"deployment_id": d.ID, "state": "installed", "colour": "red"},
		} {
			if st, _ := status(c1, "bad", now, fields); st != 400 {
				t.Errorf("status with fields %v: HTTP %d, want 400", fields, st)
			}
		}
		if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/deployments/"+d.ID, nil, &d); st != 200 {
			t.Fatal("deploy status")
		}
		if d.Counts[wire.DeployInstalled] != 1 || d.Counts[wire.DeployFailed] != 1 || len(d.Devices) != 2 {
			t.Fatalf("deploy status: %+v", d)
		}
		for _, dev := range d.Devices {
			switch dev.DeviceID {
			case deviceID(pc1):
				if dev.State != wire.DeployInstalled || dev.ExitCode == nil || *dev.ExitCode != 0 || dev.Name != "pc-1" {
					t.Errorf("pc-1: %+v", dev)
				}
			case deviceID(pc2):
				if dev.State != wire.DeployFailed || dev.ExitCode == nil || *dev.ExitCode != 3 || dev.Error != "exit code 3" {
					t.Errorf("pc-2: %+v", dev)
				}
			}
		}
		var list []wire.DeploymentInfo
		if st, _ := call(t, doraC, "GET", f.intranet+"/v1/admin/deployments", nil, &list); st != 200 || len(list) != 0 {
			t.Errorf("dora's list (out of scope): %+v", list)
		}
		if st, _ := call(t, doraC, "GET", f.intranet+"/v1/admin/deployments/"+d.ID, nil, nil); st != 404 {
			t.Errorf("dora's show (out of scope): HTTP %d", st)
		}
		if st, _ := call(t, doraC, "DELETE", f.intranet+"/v1/admin/deployments/"+d.ID, nil, nil); st != 404 {
			t.Errorf("dora's remove (out of scope): HTTP %d", st)
		}
		if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/deployments", nil, &list); st != 200 || len(list) != 1 || list[0].Counts[wire.DeployInstalled] != 1 {
			t.Errorf("list: %+v", list)
		}
		if st, _ := call(t, admin, "DELETE", f.intranet+"/v1/admin/deployments/"+d.ID, nil, nil); st != http.StatusNoContent {
			t.Errorf("deploy remove: HTTP %d", st)
		}
		if ev := nextEvent(t, ws); ev.Type != wire.EventPolicyChanged {
			t.Fatalf("event after deploy remove: %+v", ev)
		}
		pol = wire.Policy{}
		if st, _ := call(t, c1, "GET", f.intranet+"/v1/policy", nil, &pol); st != 200 || len(pol.Deployments) != 0 {
			t.Errorf("policy after deploy remove: %+v", pol.Deployments)
		}
		if st, _ := call(t, admin, "DELETE", f.intranet+"/v1/admin/content/tool/1.0", nil, nil); st != http.StatusNoContent {
			t.Errorf("content remove after the deployment went: HTTP %d", st)
		}
	})
}

// A feed outlives the server's read and write timeouts (site.Run sets them for requests):
// it clears the first and moves the second on before each line.
func TestDPFeedOutlivesServerTimeouts(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{DPPingInterval: 50 * time.Millisecond})
	srv := httptest.NewUnstartedServer(nil)
	f.mp.Configure(srv.Config, wire.Intranet)
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	cfg := f.mp.TLSConfig(nil)
	cfg.Certificates = []tls.Certificate{f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp", DNS: []string{"127.0.0.1"}, Role: "mp"})}
	srv.Listener = tls.NewListener(srv.Listener, cfg)
	srv.Start()
	t.Cleanup(srv.Close)
	resp, err := f.client(ptr(f.dpCert(t, "dp1"))).Get("https://" + srv.Listener.Addr().String() + "/v1/dp/feed")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, wire.MaxDPEventLine)
	start := time.Now()
	pings := 0
	for time.Since(start) < time.Second {
		if !sc.Scan() {
			t.Fatalf("the feed ended after %s and %d pings: %v", time.Since(start).Round(time.Millisecond), pings, sc.Err())
		}
		if strings.Contains(sc.Text(), `"ping"`) {
			pings++
		}
	}
}

// The parsers of what devices and DPs send: a deployment report's fields and a DP's URLs
// never panic, and what they accept is within bounds.
func FuzzDeployState(f *testing.F) {
	f.Add("0123456789abcdef", "downloading", "50", "", "https://dp1.corp.test:8446")
	f.Add("x", "failed", "", "255", "")
	f.Add("", "done", "-1", "x", "http://a/b?c")
	f.Fuzz(func(t *testing.T, id, state, percent, exit, dp string) {
		msg := wire.StatusMessage{Time: time.Now(), Fields: map[string]string{wire.FieldDeployment: id, wire.FieldDeployState: state,
			wire.FieldPercent: percent, wire.FieldExitCode: exit, wire.FieldDP: dp}}
		s, err := parseDeployState(msg)
		if err == nil && (s.percent < 0 || s.percent > 100 || s.id == "" || len(s.id) > 64 ||
			(s.exitCode != nil && (*s.exitCode < -1 || *s.exitCode > 255))) {
			t.Fatalf("accepted %+v", s)
		}
		if checkDPURL("url", dp) == nil && !strings.HasPrefix(dp, "https://") {
			t.Fatalf("accepted the DP URL %q", dp)
		}
	})
}
