package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/console"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// An attacker with a console session (a Full Administrator's, the worst case) sends raw
// request lines that the Go client would normalise: doubled slashes, encoded slashes and
// dots, trailing slashes, CONNECT (which ServeMux does not clean), absolute-form targets,
// method override headers, control characters in ids. None reaches an MP route outside
// the console's allowlist (those probed would answer 200 to this admin, or panic without a
// certificate: /v1/whoami), none is a 5xx, and the console's cookie and link are nothing
// to the MP's mTLS listener.
func TestConsolePathTricks(t *testing.T) {
	links := &lateLinks{}
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{ConsoleLinks: links})
	pc := f.device(t, "pc-1")
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	id := deviceID(pc)
	admin := f.user(t, "admin", access.FullAdministrator)
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

	var link wire.ConsoleLink
	if status, e := call(t, f.client(&admin), "POST", f.intranet+"/v1/admin/console/links", "{}", &link); status != 201 {
		t.Fatalf("link: HTTP %d %+v", status, e.Error)
	}
	// The link and, later, the cookie, are nothing to the MP's own listener.
	if resp, err := f.client(nil).Get(f.intranet + strings.TrimPrefix(link.URL, base)); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("the console link on the MP listener: HTTP %d", resp.StatusCode)
		}
	}
	jar, _ := cookiejar.New(nil)
	b := &http.Client{Jar: jar, Transport: srv.Client().Transport.(*http.Transport).Clone(), Timeout: 10 * time.Second}
	resp, err := b.Get(link.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var me console.Me
	if err := getJSON(b, base+"/api/me", &me); err != nil || me.User != "admin" {
		t.Fatalf("me %+v %v", me, err)
	}
	u := resp.Request.URL
	cookie := jar.Cookies(u)[0].String()
	req, _ := http.NewRequest("GET", f.intranet+"/v1/admin/policies", nil)
	req.Header.Set("Cookie", cookie)
	if resp, err := f.client(nil).Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("the console cookie on the MP listener: HTTP %d", resp.StatusCode)
		}
	}
	// Reached, the policies would be this admin's 200 (the probe's control).
	if status, _ := call(t, f.client(&admin), "GET", f.intranet+"/v1/admin/policies", nil, nil); status != 200 {
		t.Fatalf("control: policies HTTP %d", status)
	}

	raw := func(method, target string, hdr map[string]string) (int, string) {
		t.Helper()
		conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), srv.Client().Transport.(*http.Transport).TLSClientConfig)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		var sb strings.Builder
		sb.WriteString(method + " " + target + " HTTP/1.1\r\nHost: " + u.Host + "\r\nCookie: " + cookie + "\r\n")
		sb.WriteString(console.CSRFHeader + ": " + me.CSRF + "\r\nOrigin: " + base + "\r\nContent-Length: 2\r\nConnection: close\r\n")
		for k, v := range hdr {
			sb.WriteString(k + ": " + v + "\r\n")
		}
		sb.WriteString("\r\n{}")
		if _, err := io.WriteString(conn, sb.String()); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%s %s: %v", method, target, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, r := range []struct{ method, target string }{
		{"GET", "/api//v1/admin/policies"},
		{"GET", "/api/v1/admin//policies"},
		{"GET", "/api/v1/admin/policies/"},
		{"GET", "/api/v1/admin/POLICIES"},
		{"GET", "/api/v1/admin/devices/..%2fpolicies"},
		{"GET", "/api/v1/admin/devices/%2e%2e/policies"},
		{"GET", "/api/v1/admin/%2e%2e/%2e%2e/v1/whoami"},
		{"GET", "/api/v1/admin/sessions/x%2F..%2F..%2Fpolicies"},
		{"GET", "/api/v1/admin/devices/" + id + "%2F..%2F..%2Fpolicies"},
		{"GET", "/api/v1/admin/devices/" + id + "/messages/../../../policies"},
		{"GET", "/api%2fv1/admin/policies"},
		{"GET", "/%61pi/v1/admin/policies"},
		{"GET", "/api/v1/admin/sessions/x/relay"},
		{"GET", "/api/v1/admin/sessions/x/recording"},
		{"POST", "/api/v1/admin/sessions/x/join"},
		{"POST", "/api/v1/admin/sessions/codes"},
		{"POST", "/api/v1/admin/devices/" + id + "/block"},
		{"POST", "/api/v1/admin/console/links"},
		{"GET", "https://evil.test/api/v1/admin/policies"},
		{"CONNECT", "/api/v1/admin/../../v1/whoami"},
		{"CONNECT", "/api/v1/admin/policies"},
		{"CONNECT", "/api/v1/admin/devices/" + id + "/../../../v1/whoami"},
		{"OPTIONS", "/api/v1/admin/policies"},
		{"PROPFIND", "/api/v1/admin/devices"},
		{"GET", "/api/v1/whoami"},
		{"GET", "/api/../v1/whoami"},
		{"GET", "/v1/whoami"},
		{"GET", "/v1/admin/policies"},
	} {
		status, body := raw(r.method, r.target, map[string]string{"X-HTTP-Method-Override": "GET"})
		if status == 200 || status >= 500 || strings.Contains(body, `"remote_control"`) {
			t.Errorf("%s %s: HTTP %d %.200s", r.method, r.target, status, body)
		}
	}
	// Method override does not turn a GET into the POST of an allowlisted route's neighbour.
	if status, body := raw("GET", "/api/v1/admin/devices/"+id+"/block", map[string]string{"X-HTTP-Method-Override": "POST", "X-Method-Override": "POST"}); status != 404 {
		t.Errorf("override: HTTP %d %.200s", status, body)
	}
	// Ids with control characters, invalid UTF-8, or too long: refused or not found, no 5xx.
	for _, p := range []string{"/devices/%00", "/devices/a%0d%0aX-Injected:%201", "/devices/%ff%fe", "/devices/" + strings.Repeat("a", 4000),
		"/sessions/%00", "/sessions/%ff/end", "/devices/%00/remote", "/devices/%0a/deployments", "/devices/%ff/messages"} {
		method := "GET"
		if strings.HasSuffix(p, "/end") {
			method = "POST"
		}
		if status, body := raw(method, "/api/v1/admin"+p, nil); status < 400 || status >= 500 || strings.Contains(body, "X-Injected") && !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s: HTTP %d %.200s", method, p, status, body)
		}
	}
	for _, p := range []string{"/remote", "/deployments", "/messages", ""} {
		if status, body := raw("GET", "/api/v1/admin/devices/"+strings.Repeat("f", 64)+p, nil); status != 404 {
			t.Errorf("unknown device%s: HTTP %d %.200s", p, status, body)
		}
	}
	// HEAD of an allowlisted GET is a GET without a body; of a POST route, nothing.
	if status, _ := raw("HEAD", "/api/v1/admin/devices", nil); status != 200 {
		t.Errorf("HEAD devices: HTTP %d", status)
	}
	if status, _ := raw("HEAD", "/api/v1/admin/sessions/"+strings.Repeat("a", 32)+"/end", nil); status != 404 {
		t.Errorf("HEAD end: HTTP %d", status)
	}
}

// A device names itself (and writes its errors): a formula behind white space (imports
// that trim it), a line break, or in full-width characters is kept out of spreadsheets too.
func TestCSVCellBehindSpaces(t *testing.T) {
	for in, want := range map[string]string{" =1+1": "' =1+1", "  @SUM(A1)": "'  @SUM(A1)", "\n=cmd": "'\n=cmd", "\u00a0-1": "'\u00a0-1",
		"\uff1dHYPERLINK(1)": "'\uff1dHYPERLINK(1)", "\uff20x": "'\uff20x", " x": " x", "pc 1": "pc 1", "a=1": "a=1", " ": " "} {
		if got := csvCell(in); got != want {
			t.Errorf("csvCell(%q) = %q, want %q", in, got, want)
		}
	}
}

// A path or query with a NUL, another control character or bytes that are not UTF-8
// reached PostgreSQL through the console, which refused the statement: 500 internal error
// (and an error in the log) at every allowlisted route. The console refuses them: 400.
func TestConsoleAPIRefusesControlCharacters(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		f := newFixture(t, db, Options{})
		f.user(t, "admin", access.FullAdministrator)
		f.user(t, "hd", access.HelpDeskOperator)
		for _, user := range []string{"admin", "hd"} {
			for _, r := range []struct{ method, path, query string }{
				{"GET", "/v1/admin/devices/\x00", ""},
				{"GET", "/v1/admin/devices/\xff", ""},
				{"GET", "/v1/admin/devices/\xff/remote", ""},
				{"GET", "/v1/admin/devices/\x00/deployments", ""},
				{"GET", "/v1/admin/devices/a\nb/messages", ""},
				{"GET", "/v1/admin/sessions/\x00", ""},
				{"GET", "/v1/admin/sessions/\xff", ""},
				{"POST", "/v1/admin/sessions/\x00/end", ""},
				{"GET", "/v1/admin/sessions", "helper=%00"},
				{"GET", "/v1/admin/sessions", "device=%ff"},
				{"GET", "/v1/admin/sessions", "%00=1"},
			} {
				req := httptest.NewRequest(r.method, "/", nil)
				req.URL.Path, req.URL.RawQuery = r.path, r.query
				rec := httptest.NewRecorder()
				f.mp.ConsoleAPI(user).ServeHTTP(rec, req)
				if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"bad_request"`) {
					t.Errorf("%s %s %q ?%s: HTTP %d %s", user, r.method, r.path, r.query, rec.Code, rec.Body.String())
				}
			}
		}
		// Ordinary ids still go through.
		req := httptest.NewRequest("GET", "/v1/admin/sessions?helper=admin", nil)
		rec := httptest.NewRecorder()
		f.mp.ConsoleAPI("admin").ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Errorf("sessions: HTTP %d %s", rec.Code, rec.Body.String())
		}
	})
}
