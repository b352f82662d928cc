package console

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/pgtest"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func urlParse(s string) (*url.URL, error) { return url.Parse(s) }

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// clock is a settable time for the fixture.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeBackend records the admin calls the console passes on.
type fakeBackend struct {
	mu      sync.Mutex
	calls   []string        // "user METHOD path?query"
	revoked map[string]bool // serials
}

func (b *fakeBackend) CertificateRevoked(serial string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.revoked[serial]
}

func (b *fakeBackend) revoke(serial string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.revoked == nil {
		b.revoked = map[string]bool{}
	}
	b.revoked[serial] = true
}

func (b *fakeBackend) ConsoleAPI(user string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		b.mu.Lock()
		b.calls = append(b.calls, user+" "+r.Method+" "+r.URL.RequestURI())
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"path": r.URL.Path, "bytes": n, "cookie": r.Header.Get("Cookie")})
	})
}

func (b *fakeBackend) DialSession(context.Context, string, string, string) (net.Conn, error) {
	return nil, errors.New("not in this test")
}

func (b *fakeBackend) last() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.calls) == 0 {
		return ""
	}
	return b.calls[len(b.calls)-1]
}

// fixture is a console on real TLS on 127.0.0.1 over a real site database.
type fixture struct {
	c       *Console
	users   *access.Store
	backend *fakeBackend
	clock   *clock
	srv     *httptest.Server
	url     string
}

var testAssets = fstest.MapFS{
	"index.html":      {Data: []byte("<!doctype html><title>shell</title><div id=app></div>")},
	"assets/app.js":   {Data: []byte("console.log('app')")},
	"logged-out.html": {Data: []byte("<!doctype html><title>you are logged out</title>")},
	"assets/x/y.css":  {Data: []byte("body{}")},
}

func newFixture(t *testing.T, db *sitedb.DB) *fixture {
	t.Helper()
	ctx := context.Background()
	users, err := access.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct{ name, role string }{{"alice", access.FullAdministrator}, {"bob", access.ReadOnlyAnalyst}} {
		if err := users.AddUser(ctx, access.User{Name: u.name, DisplayName: strings.ToUpper(u.name)}, "test"); err != nil {
			t.Fatal(err)
		}
		if err := users.Assign(ctx, u.name, u.role, nil, "test"); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f := &fixture{users: users, backend: &fakeBackend{}, clock: &clock{t: time.Now()}, srv: srv, url: "https://" + srv.Listener.Addr().String()}
	f.c, err = New(ctx, Options{DB: db, Access: users, Backend: f.backend, URL: f.url, Log: zerolog.Nop(), Now: f.clock.now, Assets: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = f.c.Handler()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return f
}

func sqliteFixture(t *testing.T) *fixture {
	return newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)))
}

// browser is an HTTP client with a cookie jar that trusts the fixture's certificate and
// does not follow redirects (the tests look at them).
func (f *fixture) browser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Transport: f.srv.Client().Transport.(*http.Transport).Clone(), Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (f *fixture) link(t *testing.T, user string) string {
	t.Helper()
	u, exp, err := f.c.CreateLink(context.Background(), user, testCert())
	if err != nil {
		t.Fatal(err)
	}
	if want := f.clock.now().Add(LinkLifetime); exp.After(want) || exp.Before(want.Add(-2*time.Second)) {
		t.Errorf("link expires %s, want %s", exp, want)
	}
	if !strings.HasPrefix(u, f.url+"/login/ibcm_") {
		t.Fatalf("link %q", u)
	}
	return u
}

type answer struct {
	status int
	header http.Header
	body   string
	resp   *http.Response
}

func do(t *testing.T, c *http.Client, method, url string, body io.Reader, hdr map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b), resp}
}

// login opens a fresh link of user in browser c and returns the session's CSRF token.
func (f *fixture) login(t *testing.T, c *http.Client, user string) string {
	t.Helper()
	a := do(t, c, "GET", f.link(t, user), nil, nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/devices" {
		t.Fatalf("login: HTTP %d to %q: %s", a.status, a.header.Get("Location"), a.body)
	}
	return f.me(t, c).CSRF
}

func (f *fixture) me(t *testing.T, c *http.Client) Me {
	t.Helper()
	a := do(t, c, "GET", f.url+"/api/me", nil, nil)
	if a.status != 200 {
		t.Fatalf("/api/me: HTTP %d %s", a.status, a.body)
	}
	var me Me
	if err := json.Unmarshal([]byte(a.body), &me); err != nil {
		t.Fatal(err)
	}
	return me
}

func wantLoginRequired(t *testing.T, a answer) {
	t.Helper()
	var e wire.Error
	if a.status != http.StatusUnauthorized || json.Unmarshal([]byte(a.body), &e) != nil || e.Error.Code != "login_required" {
		t.Errorf("want 401 login_required, got HTTP %d %s", a.status, a.body)
	}
}

func wantCode(t *testing.T, a answer, status int, code string) {
	t.Helper()
	var e wire.Error
	if a.status != status || json.Unmarshal([]byte(a.body), &e) != nil || e.Error.Code != code {
		t.Errorf("want %d %s, got HTTP %d %s", status, code, a.status, a.body)
	}
}

// The one-time link works once: it sets the cookie with exactly the contract's flags and
// sends the browser to /devices; the second use is a 401 page.
func TestLoginLinkOnceAndCookieFlags(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	link := f.link(t, "alice")
	a := do(t, c, "GET", link, nil, nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/devices" {
		t.Fatalf("HTTP %d to %q", a.status, a.header.Get("Location"))
	}
	sc := a.header.Values("Set-Cookie")
	if len(sc) != 1 {
		t.Fatalf("Set-Cookie %q", sc)
	}
	parts := strings.Split(sc[0], "; ")
	name, value, _ := strings.Cut(parts[0], "=")
	if name != "__Host-ibcm" || len(value) != 43 {
		t.Errorf("cookie %q", parts[0])
	}
	if _, err := parseSecret(value); err != nil {
		t.Errorf("cookie value: %v", err)
	}
	got := map[string]bool{}
	for _, p := range parts[1:] {
		got[p] = true
	}
	want := map[string]bool{"Path=/": true, "Max-Age=28800": true, "HttpOnly": true, "Secure": true, "SameSite=Strict": true}
	for k := range want {
		if !got[k] {
			t.Errorf("cookie lacks %s: %q", k, sc[0])
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("cookie has %s: %q", k, sc[0]) // no Domain: the __Host- prefix forbids it
		}
	}
	// The page shell with the cookie.
	if a := do(t, c, "GET", f.url+"/devices", nil, nil); a.status != 200 || !strings.Contains(a.body, "<title>shell</title>") {
		t.Errorf("/devices: HTTP %d %s", a.status, a.body)
	}
	me := f.me(t, c)
	if me.User != "alice" || me.DisplayName != "ALICE" || len(me.CSRF) != 43 || len(me.Permissions) != len(access.Permissions) ||
		!me.ExpiresAt.Equal(f.clock.now().Add(SessionLifetime).Truncate(time.Second)) {
		t.Errorf("me %+v", me)
	}
	// Second use, even from another browser: refused.
	for _, b := range []*http.Client{c, f.browser(t)} {
		a := do(t, b, "GET", link, nil, nil)
		if a.status != http.StatusUnauthorized || !strings.Contains(a.body, `id="login-needed"`) || !strings.Contains(a.body, "ibcm console login") {
			t.Errorf("second use: HTTP %d %s", a.status, a.body)
		}
		if len(a.header.Values("Set-Cookie")) != 0 {
			t.Error("second use set a cookie")
		}
	}
	// Garbage tokens: the same page.
	for _, tok := range []string{"x", "ibcm_", "ibcm_" + strings.Repeat("A", 43), strings.Repeat("A", 48), "ibcm_" + strings.Repeat("!", 43)} {
		if a := do(t, c, "GET", f.url+"/login/"+tok, nil, nil); a.status != http.StatusUnauthorized {
			t.Errorf("token %q: HTTP %d", tok, a.status)
		}
	}
}

func TestExpiredLinkAndSession(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	link := f.link(t, "alice")
	f.clock.add(LinkLifetime + time.Second)
	if a := do(t, c, "GET", link, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("expired link: HTTP %d", a.status)
	}
	f.login(t, c, "alice")
	f.clock.add(SessionLifetime - time.Minute)
	f.me(t, c)
	f.clock.add(2 * time.Minute)
	wantLoginRequired(t, do(t, c, "GET", f.url+"/api/me", nil, nil))
	a := do(t, c, "GET", f.url+"/devices", nil, nil)
	if a.status != http.StatusUnauthorized || !strings.Contains(a.body, `id="login-needed"`) {
		t.Errorf("page after expiry: HTTP %d %s", a.status, a.body)
	}
	// Purge drops the spent link, the expired link and the expired session.
	if n, err := f.c.Purge(context.Background()); err != nil || n != 3 {
		t.Errorf("purge: %d, %v", n, err)
	}
}

func TestLogoutRevokesTheSession(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	csrf := f.login(t, c, "alice")
	u, _ := urlParse(f.url)
	old := c.Jar.Cookies(u)
	if len(old) != 1 {
		t.Fatalf("jar %v", old)
	}
	// Without the token: refused, still logged in.
	if a := do(t, c, "POST", f.url+"/logout", nil, nil); a.status != http.StatusForbidden {
		t.Errorf("logout without CSRF: HTTP %d", a.status)
	}
	f.me(t, c)
	a := do(t, c, "POST", f.url+"/logout", nil, map[string]string{CSRFHeader: csrf, "Origin": f.url})
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/logged-out" {
		t.Fatalf("logout: HTTP %d to %q", a.status, a.header.Get("Location"))
	}
	if sc := a.header.Get("Set-Cookie"); !strings.HasPrefix(sc, "__Host-ibcm=;") || !strings.Contains(sc, "Max-Age=0") {
		t.Errorf("logout cookie %q", sc)
	}
	wantLoginRequired(t, do(t, c, "GET", f.url+"/api/me", nil, nil))
	// The old cookie, presented again (a copy of it), no longer works.
	b := f.browser(t)
	b.Jar.SetCookies(u, old)
	wantLoginRequired(t, do(t, b, "GET", f.url+"/api/me", nil, nil))
	if a := do(t, c, "GET", f.url+"/logged-out", nil, nil); a.status != 200 || !strings.Contains(a.body, "logged out") {
		t.Errorf("/logged-out: HTTP %d %s", a.status, a.body)
	}
	// A form post with the token in the body works too.
	csrf = f.login(t, c, "alice")
	a = do(t, c, "POST", f.url+"/logout", strings.NewReader("csrf="+csrf), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	if a.status != http.StatusSeeOther {
		t.Errorf("form logout: HTTP %d %s", a.status, a.body)
	}
	wantLoginRequired(t, do(t, c, "GET", f.url+"/api/me", nil, nil))
}

func TestRevokeUserAndDisabledUser(t *testing.T) {
	f := sqliteFixture(t)
	ctx := context.Background()
	c1, c2, cb := f.browser(t), f.browser(t), f.browser(t)
	f.login(t, c1, "alice")
	f.login(t, c2, "alice")
	f.login(t, cb, "bob")
	unused := f.link(t, "alice")
	if n, err := f.c.RevokeUser(ctx, "alice"); err != nil || n != 2 {
		t.Fatalf("RevokeUser: %d, %v", n, err)
	}
	wantLoginRequired(t, do(t, c1, "GET", f.url+"/api/me", nil, nil))
	wantLoginRequired(t, do(t, c2, "GET", f.url+"/api/me", nil, nil))
	if a := do(t, c1, "GET", unused, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("a link made before the revocation: HTTP %d", a.status)
	}
	f.me(t, cb) // bob's goes on
	if n, err := f.c.RevokeUser(ctx, "alice"); err != nil || n != 0 {
		t.Errorf("RevokeUser again: %d, %v", n, err)
	}

	// Disabled: the live session stops, no new link, and a link made before is refused.
	before := f.link(t, "bob")
	if err := f.users.SetDisabled(ctx, "bob", true); err != nil {
		t.Fatal(err)
	}
	wantLoginRequired(t, do(t, cb, "GET", f.url+"/api/me", nil, nil))
	if a := do(t, cb, "GET", f.url+"/sessions", nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("page of a disabled user: HTTP %d", a.status)
	}
	if _, _, err := f.c.CreateLink(ctx, "bob", testCert()); err == nil {
		t.Error("a link for a disabled user")
	}
	if _, _, err := f.c.CreateLink(ctx, "nobody", testCert()); err == nil {
		t.Error("a link for an unknown user")
	}
	if a := do(t, f.browser(t), "GET", before, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("disabled user's link: HTTP %d", a.status)
	}
	if err := f.users.SetDisabled(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	f.login(t, cb, "bob")
}

func TestCSRFAndOrigin(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	csrf := f.login(t, c, "alice")
	post := func(hdr map[string]string) answer {
		return do(t, c, "POST", f.url+"/api/v1/admin/sessions", strings.NewReader(`{"device":"d","mode":"view"}`), hdr)
	}
	wantCode(t, post(nil), http.StatusForbidden, "csrf")
	wantCode(t, post(map[string]string{CSRFHeader: "wrong"}), http.StatusForbidden, "csrf")
	wantCode(t, post(map[string]string{CSRFHeader: flipLast(csrf)}), http.StatusForbidden, "csrf")
	wantCode(t, post(map[string]string{CSRFHeader: csrf, "Origin": "https://evil.example"}), http.StatusForbidden, "csrf")
	wantCode(t, post(map[string]string{CSRFHeader: csrf, "Origin": "null"}), http.StatusForbidden, "csrf")
	wantCode(t, post(map[string]string{CSRFHeader: csrf, "Origin": strings.Replace(f.url, "https", "http", 1)}), http.StatusForbidden, "csrf")
	if f.backend.last() != "" {
		t.Fatalf("a refused request reached the MP: %s", f.backend.last())
	}
	for _, hdr := range []map[string]string{{CSRFHeader: csrf}, {CSRFHeader: csrf, "Origin": f.url}} {
		if a := post(hdr); a.status != 200 || f.backend.last() != "alice POST /v1/admin/sessions" {
			t.Errorf("HTTP %d, backend %q", a.status, f.backend.last())
		}
	}
	// Another session's token does not do.
	other := f.browser(t)
	f.login(t, other, "alice")
	wantCode(t, do(t, other, "POST", f.url+"/api/v1/admin/sessions", strings.NewReader(`{}`), map[string]string{CSRFHeader: csrf}), http.StatusForbidden, "csrf")
	// GET needs none; the console's cookie does not reach the MP.
	a := do(t, c, "GET", f.url+"/api/v1/admin/devices?x=1", nil, nil)
	if a.status != 200 || f.backend.last() != "alice GET /v1/admin/devices?x=1" || strings.Contains(a.body, "ibcm") {
		t.Errorf("GET: HTTP %d %s, backend %q", a.status, a.body, f.backend.last())
	}
	// No session: 401 JSON, before any CSRF check.
	wantLoginRequired(t, do(t, f.browser(t), "POST", f.url+"/api/v1/admin/sessions", nil, map[string]string{CSRFHeader: csrf}))
	// Body limit.
	big := strings.NewReader(strings.Repeat(" ", MaxAPIBody+1))
	if a := do(t, c, "POST", f.url+"/api/v1/admin/sessions", big, map[string]string{CSRFHeader: csrf}); a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over %d bytes: HTTP %d", MaxAPIBody, a.status)
	}
	// Not the admin API: 404 JSON.
	wantCode(t, do(t, c, "GET", f.url+"/api/v2/x", nil, nil), http.StatusNotFound, "not_found")
}

func TestSecurityHeadersEverywhere(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	anon := f.browser(t)
	csrf := f.login(t, c, "alice")
	cases := []struct {
		name   string
		client *http.Client
		method string
		path   string
		status int
		hdr    map[string]string
	}{
		{"shell", c, "GET", "/devices/abc", 200, nil},
		{"root", c, "GET", "/", 200, nil},
		{"live", c, "GET", "/sessions/x/live", 200, nil},
		{"asset", c, "GET", "/assets/app.js", 200, nil},
		{"nested asset", c, "GET", "/assets/x/y.css", 200, nil},
		{"asset dir", c, "GET", "/assets/x", 404, nil},
		{"missing asset", c, "GET", "/assets/nope.js", 404, nil},
		{"asset no session", anon, "GET", "/assets/app.js", 200, nil},
		{"api", c, "GET", "/api/me", 200, nil},
		{"api 401", anon, "GET", "/api/me", 401, nil},
		{"api 403", c, "DELETE", "/api/v1/admin/groups/x/members/y", 403, nil},
		{"api me post", c, "POST", "/api/me", 405, map[string]string{CSRFHeader: csrf}},
		{"page 401", anon, "GET", "/devices", 401, nil},
		{"404", c, "GET", "/nope", 404, nil},
		{"login 401", anon, "GET", "/login/ibcm_x", 401, nil},
		{"logged out", anon, "GET", "/logged-out", 200, nil},
		{"healthz", anon, "GET", "/healthz", 200, nil},
	}
	for _, tc := range cases {
		a := do(t, tc.client, tc.method, f.url+tc.path, nil, tc.hdr)
		if a.status != tc.status {
			t.Errorf("%s: HTTP %d, want %d: %s", tc.name, a.status, tc.status, a.body)
		}
		for k, v := range map[string]string{"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
			"Referrer-Policy": "no-referrer", "Strict-Transport-Security": "max-age=31536000"} {
			if got := a.header.Get(k); got != v {
				t.Errorf("%s: %s %q", tc.name, k, got)
			}
		}
		cache := a.header.Get("Cache-Control")
		if (strings.HasPrefix(tc.path, "/assets/") && a.status == 200) != (cache != "no-store") {
			t.Errorf("%s: Cache-Control %q", tc.name, cache)
		}
	}
	if a := do(t, c, "GET", f.url+"/assets/app.js", nil, nil); a.body != "console.log('app')" || !strings.Contains(a.header.Get("Content-Type"), "javascript") {
		t.Errorf("asset %q %q", a.header.Get("Content-Type"), a.body)
	}
	if !strings.Contains(CSP, "frame-ancestors 'none'") || strings.Contains(CSP, "unsafe") {
		t.Errorf("CSP %q", CSP)
	}
}

// The store, on every backend: a link spent once, sessions revoked, purge.
func TestStoreOnEveryBackend(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		f := newFixture(t, db)
		ctx := context.Background()
		tok, _, err := f.c.createLink(ctx, "alice", testSerial, time.Now().AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		user, secret, _, err := f.c.useLink(ctx, tok)
		if err != nil || user != "alice" {
			t.Fatalf("useLink: %q %v", user, err)
		}
		if _, _, _, err := f.c.useLink(ctx, tok); !errors.Is(err, errLinkInvalid) {
			t.Errorf("second use: %v", err)
		}
		cookie := encodeSecret(secret)
		if s, err := f.c.lookup(ctx, cookie); err != nil || s.user != "alice" || s.csrf != csrfOf(secret) {
			t.Fatalf("lookup: %+v %v", s, err)
		}
		if n, err := f.c.RevokeUser(ctx, "alice"); err != nil || n != 1 {
			t.Errorf("RevokeUser: %d %v", n, err)
		}
		if _, err := f.c.lookup(ctx, cookie); !errors.Is(err, errNoSession) {
			t.Errorf("after revoke: %v", err)
		}
		if n, err := f.c.Purge(ctx); err != nil || n != 2 {
			t.Errorf("purge: %d %v", n, err)
		}
		// The store keeps hashes only.
		var h string
		if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM console_links`).Scan(&h); err != nil || h != "0" {
			t.Errorf("links left: %s %v", h, err)
		}
	})
}

// Neither the link's token nor the cookie is stored: only their SHA-256.
func TestOnlyHashesStored(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	link := f.link(t, "alice")
	tok := link[strings.LastIndex(link, "/")+1:]
	f.login(t, c, "alice")
	u, _ := urlParse(f.url)
	cookie := c.Jar.Cookies(u)[0].Value
	ctx := context.Background()
	for _, q := range []string{`SELECT hash FROM console_links`, `SELECT hash FROM console_sessions`} {
		rows, err := f.c.db.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var h string
			_ = rows.Scan(&h)
			if len(h) != 64 || strings.Contains(h, tok) || strings.Contains(tok, h) || h == cookie {
				t.Errorf("stored %q", h)
			}
		}
		rows.Close()
	}
}

func TestOriginOfURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://Console.corp:9445": "https://console.corp:9445",
		"https://console.corp/":     "https://console.corp",
		"https://127.0.0.1:9445":    "https://127.0.0.1:9445",
		"https://console.corp:443":  "https://console.corp",
		"https://[::1]:443":         "https://[::1]",
		"https://[::1]:9445":        "https://[::1]:9445",
		"http://console.corp:9445":  "",
		"https://console.corp/x":    "",
		"https://u@console.corp":    "",
		"https://console.corp/?a=b": "",
		"console.corp:9445":         "",
		"":                          "",
	} {
		got, err := Origin(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("Origin(%q) = %q, %v", in, got, err)
		}
	}
}

// FuzzTokens: the link and cookie parsers never panic, and accept exactly what
// this package makes (an accepted value encodes back to itself).
func FuzzTokens(f *testing.F) {
	s := newSecret()
	f.Add(encodeSecret(s))
	f.Add(linkPrefix + encodeSecret(s))
	f.Add("ibcm_")
	f.Add(strings.Repeat("A", 43))
	f.Add(strings.Repeat("_", 42) + "-")
	f.Fuzz(func(t *testing.T, in string) {
		if b, err := parseSecret(in); err == nil {
			if len(b) != secretLen || encodeSecret(b) != in {
				t.Fatalf("parseSecret(%q) accepted %x", in, b)
			}
		}
		if b, err := parseLinkToken(in); err == nil {
			if len(b) != secretLen || linkPrefix+encodeSecret(b) != in {
				t.Fatalf("parseLinkToken(%q) accepted %x", in, b)
			}
		}
	})
}

// Run purges on its schedule until its context ends.
func TestRunPurgesOnSchedule(t *testing.T) {
	f := sqliteFixture(t)
	f.c.purge = 5 * time.Millisecond
	f.link(t, "alice")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.c.Run(ctx) }()
	count := func() int {
		var n int
		if err := f.c.db.QueryRow(context.Background(), `SELECT COUNT(*) FROM console_links`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("%d links before expiry", n) // not purged while valid
	}
	f.clock.add(LinkLifetime + time.Second)
	for deadline := time.Now().Add(5 * time.Second); count() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the expired link was not purged")
		}
	}
	cancel()
	<-done
}

// flipLast changes the last character of a base64url token.
func flipLast(s string) string {
	if strings.HasSuffix(s, "A") {
		return s[:len(s)-1] + "B"
	}
	return s[:len(s)-1] + "A"
}

// testSerial is the serial of testCert, the certificate the tests' links are made with
// (valid a year).
const testSerial = "4242"

func testCert() *x509.Certificate {
	return &x509.Certificate{SerialNumber: big.NewInt(4242), NotAfter: time.Now().AddDate(1, 0, 0)}
}

// A session ends with the certificate its login was made with, at the latest: the cookie
// says so too; a link of an expired certificate does not open.
func TestSessionEndsWithItsCertificate(t *testing.T) {
	f := sqliteFixture(t)
	cert := testCert()
	cert.NotAfter = f.clock.now().Add(time.Hour)
	u, _, err := f.c.CreateLink(context.Background(), "alice", cert)
	if err != nil {
		t.Fatal(err)
	}
	b := f.browser(t)
	a := do(t, b, "GET", u, nil, nil)
	if a.status != http.StatusSeeOther {
		t.Fatalf("login: HTTP %d", a.status)
	}
	for _, ck := range a.resp.Cookies() {
		if ck.Name == CookieName && (ck.MaxAge > 3600 || ck.MaxAge < 3500) {
			t.Errorf("cookie Max-Age %d, want the certificate's hour", ck.MaxAge)
		}
	}
	f.clock.add(59 * time.Minute)
	if a := do(t, b, "GET", f.url+"/api/me", nil, nil); a.status != 200 {
		t.Fatalf("before the certificate expires: HTTP %d", a.status)
	}
	f.clock.add(2 * time.Minute)
	if a := do(t, b, "GET", f.url+"/api/me", nil, nil); a.status != 401 {
		t.Errorf("after the certificate expired: HTTP %d", a.status)
	}
	u, _, err = f.c.CreateLink(context.Background(), "alice", cert) // made with an expired certificate
	if err != nil {
		t.Fatal(err)
	}
	if a := do(t, f.browser(t), "GET", u, nil, nil); a.status != 401 {
		t.Errorf("the link of an expired certificate: HTTP %d", a.status)
	}
}

// A console login lives no longer than the certificate that made it (a stolen laptop's
// certificate revoked): its unused link no longer opens, and its open session ends at the
// next request; a login made with another certificate goes on.
func TestRevokedCertificateEndsLogins(t *testing.T) {
	f := sqliteFixture(t)
	used, unused, other := f.browser(t), f.browser(t), f.browser(t)
	f.login(t, used, "alice")
	pending := f.link(t, "alice")
	other4343 := testCert()
	other4343.SerialNumber = big.NewInt(4343)
	u, _, err := f.c.CreateLink(context.Background(), "alice", other4343)
	if err != nil {
		t.Fatal(err)
	}
	if a := do(t, other, "GET", u, nil, nil); a.status != http.StatusSeeOther {
		t.Fatalf("the other certificate's link: HTTP %d", a.status)
	}
	if a := do(t, used, "GET", f.url+"/api/me", nil, nil); a.status != 200 {
		t.Fatalf("before the revocation: HTTP %d %s", a.status, a.body)
	}
	f.backend.revoke(testSerial)
	if a := do(t, used, "GET", f.url+"/api/me", nil, nil); a.status != 401 || !strings.Contains(a.body, "login_required") {
		t.Errorf("the session of a revoked certificate: HTTP %d %s", a.status, a.body)
	}
	if a := do(t, unused, "GET", pending, nil, nil); a.status != 401 {
		t.Errorf("the link of a revoked certificate: HTTP %d", a.status)
	}
	if a := do(t, other, "GET", f.url+"/api/me", nil, nil); a.status != 200 {
		t.Errorf("another certificate's session: HTTP %d %s", a.status, a.body)
	}
	if _, _, err := f.c.CreateLink(context.Background(), "alice", nil); err == nil {
		t.Error("a link without the certificate was made")
	}
}
