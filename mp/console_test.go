package mp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/console"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// consoleCall serves one request through ConsoleAPI(user), as the console passes it.
func consoleCall(t *testing.T, m *MP, user, method, path, body string) (int, wire.Error, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	rec := httptest.NewRecorder()
	m.ConsoleAPI(user).ServeHTTP(rec, req) // a panic fails the test
	var e wire.Error
	if rec.Code >= 300 {
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
	}
	return rec.Code, e, rec.Body.String()
}

// insertTestSession records a session as the broker would.
func insertTestSession(t *testing.T, f *fixture, s wire.Session) {
	t.Helper()
	if s.Modes == nil {
		s.Modes = []wire.SessionMode{}
	}
	if s.RequestedAt.IsZero() {
		s.RequestedAt = time.Now().UTC()
	}
	if err := f.db.Tx(context.Background(), func(tx *sitedb.Tx) error { return insertSession(tx, sessionRow{Session: s}) }); err != nil {
		t.Fatal(err)
	}
}

// Every route of the console's allowlist, called as a user without a certificate (the
// console's peer): none panics or fails on the missing certificate, and every route of the
// allowlist is in the table. Anything else is 404, even for a Full Administrator.
func TestConsoleAPIAllowlistWithoutCertificate(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	id := deviceID(pc)
	f.user(t, "admin", access.FullAdministrator)
	f.user(t, "analyst", access.ReadOnlyAnalyst)
	sid := strings.Repeat("a", 32)
	insertTestSession(t, f, wire.Session{ID: sid, Device: id, DeviceName: "pc-1", Helper: "admin", State: wire.SessionActive, Mode: "view", MP: f.mp.o.ID})

	rows := []struct {
		method, path, body string
		status             []int
	}{
		{"GET", "/v1/admin/devices", "", []int{200}},
		{"GET", "/v1/admin/devices/" + id, "", []int{200}},
		{"GET", "/v1/admin/devices/" + id + "/messages", "", []int{200}},
		{"GET", "/v1/admin/devices/" + id + "/remote", "", []int{200}},
		{"GET", "/v1/admin/devices/" + id + "/deployments", "", []int{200}},
		{"GET", "/v1/admin/groups", "", []int{200}},
		{"GET", "/v1/admin/sessions", "", []int{200}},
		{"GET", "/v1/admin/sessions?format=csv", "", []int{200}},
		{"GET", "/v1/admin/sessions/" + sid, "", []int{200}},
		// Until browser sessions exist: 503 console_sessions_unavailable; then the device
		// is offline (no notification channel here): 409.
		{"POST", "/v1/admin/sessions", `{"device":"` + id + `","mode":"view"}`, []int{503, 409}},
		{"POST", "/v1/admin/sessions/" + sid + "/end", "", []int{200}},
	}
	wildcard := regexp.MustCompile(`\{[^}]+\}`)
	for pat := range consoleAllowlist {
		method, path, _ := strings.Cut(pat, " ")
		re := regexp.MustCompile("^" + strings.ReplaceAll(regexp.QuoteMeta(wildcard.ReplaceAllString(path, "\x00")), "\x00", "[^/?]+") + `(\?.*)?$`)
		if !slices.ContainsFunc(rows, func(r struct {
			method, path, body string
			status             []int
		}) bool {
			return r.method == method && re.MatchString(r.path)
		}) {
			t.Errorf("allowlisted %s is not in the table", pat)
		}
	}
	for _, r := range rows {
		status, e, body := consoleCall(t, f.mp, "admin", r.method, r.path, r.body)
		if !slices.Contains(r.status, status) {
			t.Errorf("%s %s: HTTP %d %+v %s", r.method, r.path, status, e.Error, body)
		}
	}
	for _, r := range []struct{ method, path string }{
		{"POST", "/v1/admin/devices/" + id + "/block"},
		{"POST", "/v1/admin/devices/" + id + "/notify"},
		{"POST", "/v1/admin/devices"},
		{"GET", "/v1/admin/policies"},
		{"PUT", "/v1/admin/policies/default"},
		{"POST", "/v1/admin/groups"},
		{"POST", "/v1/admin/console/links"},
		{"POST", "/v1/admin/console/revoke"},
		{"POST", "/v1/admin/sessions/codes"},
		{"POST", "/v1/admin/sessions/" + sid + "/join"},
		{"GET", "/v1/admin/sessions/" + sid + "/recording"},
		{"GET", "/v1/admin/sessions/" + sid + "/relay"},
		{"GET", "/v1/admin/content"},
		{"GET", "/v1/admin/deployments"},
		{"GET", "/v1/whoami"},
		{"GET", "/healthz"},
		{"GET", "/v1/policy"},
		{"GET", "/v1/admin/devices/" + id + "/x"},
		{"GET", "/v1/admin/devices/" + id + "/../../policies"},
	} {
		status, e, _ := consoleCall(t, f.mp, "admin", r.method, r.path, "{}")
		if status != http.StatusNotFound || e.Error.Code != "not_found" {
			t.Errorf("%s %s: HTTP %d %+v", r.method, r.path, status, e.Error)
		}
	}
	// The same guards as with a certificate: a Read-only Analyst reads, but starts nothing.
	if status, _, _ := consoleCall(t, f.mp, "analyst", "GET", "/v1/admin/devices", ""); status != 200 {
		t.Errorf("analyst GET devices: HTTP %d", status)
	}
	if status, e, _ := consoleCall(t, f.mp, "analyst", "POST", "/v1/admin/sessions", `{"device":"`+id+`","mode":"view"}`); status != 403 || e.Error.Code != "forbidden" {
		t.Errorf("analyst POST sessions: HTTP %d %+v", status, e.Error)
	}
	// An unknown user has no grants.
	if status, e, _ := consoleCall(t, f.mp, "ghost", "GET", "/v1/admin/devices", ""); status != 403 {
		t.Errorf("unknown user: HTTP %d %+v", status, e.Error)
	}
}

// fakeLinks records what the MP asks of the console.
type fakeLinks struct{ revoked, serials []string }

func (l *fakeLinks) CreateLink(_ context.Context, user string, cert *x509.Certificate) (string, time.Time, error) {
	l.serials = append(l.serials, cert.SerialNumber.String())
	return "https://console.test/login/ibcm_" + user, time.Unix(1e9, 0).UTC(), nil
}

func (l *fakeLinks) RevokeUser(_ context.Context, user string) (int, error) {
	l.revoked = append(l.revoked, user)
	return 2, nil
}

func TestConsoleLinkAndRevokeRoutes(t *testing.T) {
	links := &fakeLinks{}
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{ConsoleLinks: links})
	admin, analyst := f.user(t, "admin", access.FullAdministrator), f.user(t, "analyst", access.ReadOnlyAnalyst)
	var link wire.ConsoleLink
	// Other genuine credentials of the site make no login: a device's, an MP's, a DP's.
	for name, cert := range map[string]tls.Certificate{
		"device": f.device(t, "pc-links"),
		"mp":     f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp2", DNS: []string{"127.0.0.1"}, Role: "mp"}),
		"dp":     f.issue(t, ca.IssueSpec{Profile: ca.SiteServer, Subject: "dp9", DNS: []string{"127.0.0.1"}, Role: "dp"}),
	} {
		for _, p := range []string{"/v1/admin/console/links", "/v1/admin/console/revoke"} {
			if status, e := call(t, f.client(&cert), "POST", f.intranet+p, "{}", nil); status != 403 {
				t.Errorf("%s certificate on %s: HTTP %d %+v", name, p, status, e.Error)
			}
		}
	}
	if len(links.serials) != 0 || len(links.revoked) != 0 {
		t.Fatalf("other credentials reached the console: links %v, revoked %v", links.serials, links.revoked)
	}
	if status, e := call(t, f.client(&analyst), "POST", f.intranet+"/v1/admin/console/links", "{}", &link); status != 201 ||
		link.URL != "https://console.test/login/ibcm_analyst" || !link.ExpiresAt.Equal(time.Unix(1e9, 0)) {
		t.Errorf("links: HTTP %d %+v %+v", status, e.Error, link)
	}
	if want := analyst.Leaf.SerialNumber.String(); len(links.serials) != 1 || links.serials[0] != want {
		t.Errorf("the link was made for certificate %v, want [%s]", links.serials, want)
	}
	// The console asks whether that certificate is revoked: not yet; then it is, at once.
	carol := f.user(t, "carol", access.ReadOnlyAnalyst)
	serial := carol.Leaf.SerialNumber.String()
	if f.mp.CertificateRevoked(serial) {
		t.Error("a valid certificate counted as revoked")
	}
	for _, bad := range []string{"", "x", "-1", "0", "12a"} {
		if !f.mp.CertificateRevoked(bad) {
			t.Errorf("serial %q: not counted as revoked", bad)
		}
	}
	if err := f.ca.Revoke(context.Background(), serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); !f.mp.CertificateRevoked(serial); time.Sleep(10 * time.Millisecond) { // polling the condition itself
		if time.Now().After(deadline) {
			t.Fatal("the MP did not count a revoked certificate as revoked within 2 s")
		}
	}
	if status, e := call(t, f.client(&analyst), "POST", f.intranet+"/v1/admin/console/links", `{"user":"admin"}`, nil); status != 400 {
		t.Errorf("links with a user: HTTP %d %+v", status, e.Error)
	}
	var res wire.ConsoleRevokeResult
	for _, c := range []struct {
		cert   *tls.Certificate
		body   string
		status int
		code   string
	}{
		{&analyst, `{"user":"admin"}`, 403, "forbidden"},
		{&analyst, `{}`, 200, ""},
		{&analyst, ``, 200, ""},
		{&analyst, `{"user":"analyst"}`, 200, ""},
		{&admin, `{"user":"analyst"}`, 200, ""},
		{&admin, `{"user":"../x"}`, 400, "bad_request"},
		{&admin, `{"user":"a","x":1}`, 400, "bad_request"},
	} {
		var in any
		if c.body != "" {
			in = c.body
		}
		status, e := call(t, f.client(c.cert), "POST", f.intranet+"/v1/admin/console/revoke", in, &res)
		if status != c.status || e.Error.Code != c.code || status == 200 && res.Revoked != 2 {
			t.Errorf("revoke %s: HTTP %d %+v %+v", c.body, status, e.Error, res)
		}
	}
	if want := []string{"analyst", "analyst", "analyst", "analyst"}; !slices.Equal(links.revoked, want) {
		t.Errorf("revoked %v", links.revoked)
	}
	// Without a console: 404 console_disabled.
	g := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	a2 := g.user(t, "admin", access.FullAdministrator)
	for _, p := range []string{"/v1/admin/console/links", "/v1/admin/console/revoke"} {
		if status, e := call(t, g.client(&a2), "POST", g.intranet+p, "{}", nil); status != 404 || e.Error.Code != "console_disabled" {
			t.Errorf("%s without a console: HTTP %d %+v", p, status, e.Error)
		}
	}
}

func TestDeviceRemoteAndDeployments(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	pc := f.device(t, "pc-1")
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	id := deviceID(pc)
	admin, analyst, helpdesk := f.user(t, "admin", access.FullAdministrator), f.user(t, "analyst", access.ReadOnlyAnalyst), f.user(t, "hd", access.HelpDeskOperator)
	remote := func(cert *tls.Certificate) wire.DeviceRemote {
		t.Helper()
		var out wire.DeviceRemote
		if status, e := call(t, f.client(cert), "GET", f.intranet+"/v1/admin/devices/"+id+"/remote", nil, &out); status != 200 {
			t.Fatalf("remote: HTTP %d %+v", status, e.Error)
		}
		return out
	}
	for _, cert := range []*tls.Certificate{&admin, &helpdesk} {
		r := remote(cert)
		if r.Online || !slices.Contains(r.Modes, "view") || !slices.Contains(r.Modes, "control") || !slices.Equal(r.Kinds, []string{"terminal", "screen"}) || r.ComplianceWarning != "" {
			t.Errorf("remote %+v", r)
		}
	}
	if r := remote(&analyst); len(r.Modes) != 0 || len(r.Kinds) != 0 || r.Modes == nil {
		t.Errorf("analyst's remote %+v", r)
	}
	ctx := context.Background()
	if _, err := f.db.Exec(ctx, `UPDATE devices SET compliance = 'noncompliant' WHERE id = ?`, id); err != nil {
		t.Fatal(err)
	}
	if r := remote(&admin); !strings.Contains(r.ComplianceWarning, "not compliant") {
		t.Errorf("no compliance warning: %+v", r)
	}
	// Remote control disabled by policy: no modes.
	pol := DefaultPolicy(testBootstrap)
	pol.Name, pol.RemoteControl.Enabled = "default", false
	if status, e := call(t, f.client(&admin), "PUT", f.intranet+"/v1/admin/policies/default", pol, nil); status != 200 {
		t.Fatalf("policy: HTTP %d %+v", status, e.Error)
	}
	if r := remote(&admin); len(r.Modes) != 0 {
		t.Errorf("remote control disabled, modes %v", r.Modes)
	}

	// Deployments: of the device's groups, pending until it reports.
	var deps []wire.DeviceDeployment
	if status, _ := call(t, f.client(&analyst), "GET", f.intranet+"/v1/admin/devices/"+id+"/deployments", nil, &deps); status != 200 || deps == nil || len(deps) != 0 {
		t.Errorf("no deployments: HTTP %d %v", status, deps)
	}
	for _, q := range []string{
		`INSERT INTO device_groups (name, policy, priority, created_at) VALUES ('lab', '', 100, 1)`,
		`INSERT INTO group_members (group_name, device_id) VALUES ('lab', '` + id + `')`,
		`INSERT INTO deployments (id, name, version, manifest_sha256, group_name, install, created, created_by) VALUES ('d1', 'tool', '1.0', 'x', 'lab', 1, 100, 'admin')`,
		`INSERT INTO deployments (id, name, version, manifest_sha256, group_name, install, created, created_by) VALUES ('d2', 'app', '2.0', 'x', 'lab', 1, 200, 'admin')`,
		`INSERT INTO deployments (id, name, version, manifest_sha256, group_name, install, created, created_by) VALUES ('d3', 'other', '1', 'x', 'elsewhere', 1, 300, 'admin')`,
		`INSERT INTO deployment_devices (deployment_id, device_id, state, percent, dp, error, msg_ns, updated) VALUES ('d2', '` + id + `', 'failed', 0, 'dp1', 'exit 3', 1, 500)`,
	} {
		if _, err := f.db.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if status, _ := call(t, f.client(&analyst), "GET", f.intranet+"/v1/admin/devices/"+id+"/deployments", nil, &deps); status != 200 || len(deps) != 2 ||
		deps[0] != (wire.DeviceDeployment{ID: "d1", Package: "tool", Version: "1.0", State: "pending", UpdatedAt: time.Unix(100, 0).UTC()}) ||
		deps[1] != (wire.DeviceDeployment{ID: "d2", Package: "app", Version: "2.0", State: "failed", Error: "exit 3", DP: "dp1", UpdatedAt: time.Unix(500, 0).UTC()}) {
		t.Errorf("deployments: HTTP %d %+v", status, deps)
	}
	// Out of scope: not found, as for any device route.
	none := f.user(t, "nobody", "")
	if status, _ := call(t, f.client(&none), "GET", f.intranet+"/v1/admin/devices/"+id+"/deployments", nil, nil); status != 403 {
		t.Errorf("a user without ReadDevices: HTTP %d", status)
	}
}

func TestSessionsCSV(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	admin, hd := f.user(t, "admin", access.FullAdministrator), f.user(t, "hd", access.HelpDeskOperator)
	start := time.Unix(1700000000, 0).UTC()
	insertTestSession(t, f, wire.Session{ID: strings.Repeat("b", 32), Device: "dev-1", DeviceName: "=HYPERLINK(\"http://x\")", Helper: "hd",
		HelperName: "+1 Help, Desk", State: wire.SessionEnded, Outcome: "refused", Error: "-oops", Mode: "view",
		Modes: []wire.SessionMode{{Mode: "view", At: start}, {Mode: "control", At: start}}, Location: "@internet", MP: "mp1", RequestedAt: start})
	insertTestSession(t, f, wire.Session{ID: strings.Repeat("c", 32), Device: "dev-2", DeviceName: "pc", Helper: "admin", State: wire.SessionRequested,
		Mode: "control", MP: "mp1", RequestedAt: start.Add(time.Hour)})
	get := func(cert *tls.Certificate, query string) (int, http.Header, [][]string) {
		t.Helper()
		resp, err := f.client(cert).Get(f.intranet + "/v1/admin/sessions" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		recs, _ := csv.NewReader(resp.Body).ReadAll()
		return resp.StatusCode, resp.Header, recs
	}
	status, h, recs := get(&admin, "?format=csv")
	if status != 200 || h.Get("Content-Type") != "text/csv; charset=utf-8" || !strings.Contains(h.Get("Content-Disposition"), "sessions.csv") || len(recs) != 3 {
		t.Fatalf("HTTP %d %v %v", status, h, recs)
	}
	if want := "id,device,device_name,helper,helper_name,sharer,sharer_name,state,outcome,error,kind,mode,modes,transport,e2e,console,location,mp,requested_at,started_at,ended_at,bytes_to_device,bytes_from_device"; strings.Join(recs[0], ",") != want {
		t.Errorf("header %v", recs[0])
	}
	row := recs[2] // newest first
	col := func(name string) string { return row[slices.Index(recs[0], name)] }
	for name, want := range map[string]string{"id": strings.Repeat("b", 32), "device_name": `'=HYPERLINK("http://x")`, "helper_name": "'+1 Help, Desk",
		"error": "'-oops", "kind": "terminal", "location": "'@internet", "modes": "view control", "e2e": "false", "console": "false", "requested_at": "2023-11-14T22:13:20Z",
		"started_at": "", "bytes_to_device": "0"} {
		if got := col(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	// The same filter and RBAC as the JSON list: a helper without ReadAudit sees their own.
	if status, _, recs := get(&hd, "?format=csv"); status != 200 || len(recs) != 2 || recs[1][0] != strings.Repeat("b", 32) {
		t.Errorf("helper's CSV: HTTP %d %v", status, recs)
	}
	if status, _, recs := get(&hd, "?format=csv&helper=admin"); status != 200 || len(recs) != 1 {
		t.Errorf("helper's CSV of another: HTTP %d %v", status, recs)
	}
	if status, _, recs := get(&admin, "?format=csv&active=1"); status != 200 || len(recs) != 2 || recs[1][0] != strings.Repeat("c", 32) {
		t.Errorf("active CSV: HTTP %d %v", status, recs)
	}
	if status, e := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/sessions?format=xml", nil, nil); status != 400 || e.Error.Code != "bad_request" {
		t.Errorf("format=xml: HTTP %d %+v", status, e.Error)
	}
	var js []wire.Session
	if status, _ := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/sessions?format=json", nil, &js); status != 200 || len(js) != 2 {
		t.Errorf("format=json: HTTP %d %d", status, len(js))
	}
	for in, want := range map[string]string{"": "", "a": "a", "=1": "'=1", "+": "'+", "-": "'-", "@x": "'@x", "\tx": "'\tx", "\rx": "'\rx", "x=1": "x=1"} {
		if got := csvCell(in); got != want {
			t.Errorf("csvCell(%q) = %q", in, got)
		}
	}
}

// The console in front of a real MP: a user logs in with the link `ibcm console login`
// gets from the MP, and the browser's calls go through the MP's own access checks.
func TestConsoleInFrontOfTheMP(t *testing.T) {
	links := &lateLinks{}
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{ConsoleLinks: links})
	pc := f.device(t, "pc-1")
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	id := deviceID(pc)
	admin, analyst := f.user(t, "admin", access.FullAdministrator), f.user(t, "analyst", access.ReadOnlyAnalyst)
	ctx := context.Background()
	users, err := access.Open(ctx, f.db)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	base := "https://" + srv.Listener.Addr().String()
	c, err := console.New(ctx, console.Options{DB: f.db, Access: users, Backend: consoleBackend{f.mp}, URL: base, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	links.ConsoleLinks = c
	srv.Config.Handler = c.Handler()
	srv.StartTLS()
	t.Cleanup(srv.Close)

	browser := func(cert *tls.Certificate) (*http.Client, string) {
		t.Helper()
		var link wire.ConsoleLink
		if status, e := call(t, f.client(cert), "POST", f.intranet+"/v1/admin/console/links", "{}", &link); status != 201 || !strings.HasPrefix(link.URL, base+"/login/") {
			t.Fatalf("link: HTTP %d %+v %+v", status, e.Error, link)
		}
		jar, _ := cookiejar.New(nil)
		b := &http.Client{Jar: jar, Transport: srv.Client().Transport.(*http.Transport).Clone(), Timeout: 10 * time.Second}
		resp, err := b.Get(link.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Request.URL.Path != "/devices" {
			t.Fatalf("login: HTTP %d at %s", resp.StatusCode, resp.Request.URL)
		}
		var me console.Me
		if err := getJSON(b, base+"/api/me", &me); err != nil {
			t.Fatal(err)
		}
		return b, me.CSRF
	}
	req := func(b *http.Client, method, path, csrf, body string) (int, string) {
		t.Helper()
		r, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if csrf != "" {
			r.Header.Set(console.CSRFHeader, csrf)
			r.Header.Set("Origin", base)
		}
		resp, err := b.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	ab, acsrf := browser(&admin)
	nb, ncsrf := browser(&analyst)
	if status, body := req(nb, "GET", "/api/v1/admin/devices", "", ""); status != 200 || !strings.Contains(body, id) {
		t.Errorf("analyst devices: HTTP %d %s", status, body)
	}
	if status, body := req(nb, "POST", "/api/v1/admin/sessions", ncsrf, `{"device":"`+id+`","mode":"view"}`); status != 403 || !strings.Contains(body, `"forbidden"`) {
		t.Errorf("analyst start: HTTP %d %s", status, body)
	}
	for _, r := range []struct{ method, path string }{{"GET", "/api/v1/admin/policies"}, {"POST", "/api/v1/admin/devices/" + id + "/block"}, {"POST", "/api/v1/admin/console/links"}} {
		if status, body := req(ab, r.method, r.path, acsrf, "{}"); status != 404 || !strings.Contains(body, `"not_found"`) {
			t.Errorf("admin %s %s: HTTP %d %s", r.method, r.path, status, body)
		}
	}
	if status, body := req(ab, "GET", "/api/v1/admin/sessions?format=csv", "", ""); status != 200 || !strings.HasPrefix(body, "id,device,") {
		t.Errorf("admin CSV: HTTP %d %s", status, body)
	}
	// ibcm console logout --user analyst, by the admin: the analyst's browser is out.
	var res wire.ConsoleRevokeResult
	if status, e := call(t, f.client(&admin), "POST", f.intranet+"/v1/admin/console/revoke", `{"user":"analyst"}`, &res); status != 200 || res.Revoked != 1 {
		t.Fatalf("revoke: HTTP %d %+v %+v", status, e.Error, res)
	}
	if status, body := req(nb, "GET", "/api/v1/admin/devices", "", ""); status != 401 || !strings.Contains(body, "login_required") {
		t.Errorf("after revoke: HTTP %d %s", status, body)
	}
	if status, _ := req(ab, "GET", "/api/v1/admin/devices", "", ""); status != 200 {
		t.Errorf("admin after the analyst's revoke: HTTP %d", status)
	}
}

// lateLinks is the console, set once made (it needs the MP first).
type lateLinks struct{ ConsoleLinks }

// consoleBackend is the MP as the console's backend (DialSession is helper B's).
type consoleBackend struct{ *MP }

func (consoleBackend) DialSession(context.Context, string, string, string) (net.Conn, error) {
	return nil, http.ErrNotSupported
}

func getJSON(c *http.Client, url string, out any) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}
