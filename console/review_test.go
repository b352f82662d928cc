package console

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// A page of another site (or another server of this host: SameSite does not separate
// ports) can navigate the browser to an attacker's own login link and so log the victim
// into the attacker's console session (login CSRF). A browser says where a navigation
// came from (Sec-Fetch-Site); a link opened from a terminal, pasted into the address bar
// or typed is "none". Neither a refused navigation nor a HEAD or a prefetch (link
// scanners, speculative loading) spends the link: its owner can still open it.
func TestLoginOnlyFromTheAddressBar(t *testing.T) {
	f := sqliteFixture(t)
	link := f.link(t, "alice")
	for _, r := range []struct {
		method string
		hdr    map[string]string
	}{
		{"GET", map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}},
		{"GET", map[string]string{"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}},
		{"GET", map[string]string{"Sec-Fetch-Site": "none", "Sec-Purpose": "prefetch"}},
		{"GET", map[string]string{"Sec-Fetch-Site": "none", "Sec-Purpose": "prefetch;prerender"}},
		{"GET", map[string]string{"Purpose": "prefetch"}},
		{"HEAD", nil},
	} {
		c := f.browser(t)
		a := do(t, c, r.method, link, nil, r.hdr)
		if a.status < 400 || len(a.header.Values("Set-Cookie")) != 0 {
			t.Errorf("%s %v: HTTP %d, Set-Cookie %q", r.method, r.hdr, a.status, a.header.Values("Set-Cookie"))
		}
		if r.method == "GET" && !strings.Contains(a.body, "address bar") {
			t.Errorf("%s %v: the page does not say how to open the link: %s", r.method, r.hdr, a.body)
		}
		if a.header.Get("Content-Security-Policy") != CSP {
			t.Errorf("%s %v: no CSP", r.method, r.hdr)
		}
	}
	// The link was not spent: opened from the address bar, it logs in.
	c := f.browser(t)
	if a := do(t, c, "GET", link, nil, map[string]string{"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}); a.status != http.StatusSeeOther {
		t.Fatalf("from the address bar: HTTP %d %s", a.status, a.body)
	}
	if me := f.me(t, c); me.User != "alice" {
		t.Errorf("me %+v", me)
	}
}

// Logging in again in the same browser (another link, maybe another user's) ends the
// session the browser had: it does not stay usable beside the new one.
func TestLoginAgainEndsTheBrowsersSession(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	f.login(t, c, "alice")
	u, _ := urlParse(f.url)
	old := c.Jar.Cookies(u)
	f.login(t, c, "bob")
	if me := f.me(t, c); me.User != "bob" {
		t.Fatalf("me %+v", me)
	}
	stale := f.browser(t)
	stale.Jar.SetCookies(u, old)
	wantLoginRequired(t, do(t, stale, "GET", f.url+"/api/me", nil, nil))
}

// Disabling a user is the site's kill switch (the CA revokes their certificates and login
// tokens so that enabling them again gives nothing back): a console session or login link
// of theirs must not come back to life when they are enabled again, whether or not a
// request came while they were disabled.
func TestDisabledUserStaysLoggedOutWhenEnabledAgain(t *testing.T) {
	f := sqliteFixture(t)
	ctx := context.Background()
	used, idle := f.browser(t), f.browser(t)
	f.login(t, used, "bob")
	f.login(t, idle, "bob")
	link := f.link(t, "bob")
	if err := f.users.SetDisabled(ctx, "bob", true); err != nil {
		t.Fatal(err)
	}
	wantLoginRequired(t, do(t, used, "GET", f.url+"/api/me", nil, nil)) // a request while disabled
	// idle makes none: the console's sweep (Run) finds the disabled user.
	if err := f.c.endDisabledUsers(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.users.SetDisabled(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	wantLoginRequired(t, do(t, used, "GET", f.url+"/api/me", nil, nil))
	wantLoginRequired(t, do(t, idle, "GET", f.url+"/api/me", nil, nil))
	if a := do(t, f.browser(t), "GET", link, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("a link made before bob was disabled: HTTP %d", a.status)
	}
	f.login(t, f.browser(t), "bob") // a new login works
}

// lockedBuffer is a log sink the server's goroutines write while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// refusingBackend refuses every admin call, as the MP refuses a user without the permission.
type refusingBackend struct{ fakeBackend }

func (*refusingBackend) ConsoleAPI(string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"error":{"code":"forbidden"}}`, http.StatusForbidden)
	})
}

// The MP's log of a refused call has no user when it comes through the console (no client
// certificate): the console's log names the user of the cookie session, for the audit.
func TestRefusedAPICallsNameTheUser(t *testing.T) {
	f := sqliteFixture(t)
	var logs lockedBuffer
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	url := "https://" + srv.Listener.Addr().String()
	c, err := New(context.Background(), Options{DB: f.c.db, Access: f.users, Backend: &refusingBackend{}, URL: url,
		Log: zerolog.New(&logs), Now: f.clock.now, Assets: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = c.Handler()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url, f.srv, f.c = url, srv, c
	b := f.browser(t)
	f.login(t, b, "bob")
	if a := do(t, b, "GET", f.url+"/api/v1/admin/devices/x/remote", nil, nil); a.status != http.StatusForbidden {
		t.Fatalf("HTTP %d %s", a.status, a.body)
	}
	out := logs.String()
	if !strings.Contains(out, `"user":"bob"`) || !strings.Contains(out, `"path":"/v1/admin/devices/x/remote"`) || !strings.Contains(out, `"status":403`) {
		t.Errorf("log %s", out)
	}
}

// Logging out is a state change like any other: no GET, no cross-site form (text/plain or
// urlencoded without the session's token, or with another Origin), no token of another
// session; the session survives every one of them.
func TestLogoutNeedsTheSessionsToken(t *testing.T) {
	f := sqliteFixture(t)
	c := f.browser(t)
	csrf := f.login(t, c, "alice")
	other := f.login(t, f.browser(t), "alice")
	for _, r := range []struct {
		method, body string
		hdr          map[string]string
	}{
		{"GET", "", nil},
		{"HEAD", "", nil},
		{"POST", "csrf=" + other, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}},
		{"POST", "csrf=" + csrf, map[string]string{"Content-Type": "text/plain"}},
		{"POST", "csrf=" + csrf, map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}},
		{"POST", "csrf=" + csrf, map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "null"}},
		{"POST", "", map[string]string{CSRFHeader: csrf, "Origin": "https://evil.example"}},
		{"POST", "csrf=" + csrf + strings.Repeat("&x=y", maxFormBody), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}},
	} {
		if a := do(t, c, r.method, f.url+"/logout", strings.NewReader(r.body), r.hdr); a.status < 400 || a.header.Get("Content-Security-Policy") != CSP {
			t.Errorf("%s %.40q %v: HTTP %d", r.method, r.body, r.hdr, a.status)
		}
		f.me(t, c)
	}
}

// No secret of the console reaches its log: not the link (made, refused unspent, used,
// used again), not the cookie, not the CSRF token.
func TestNoSecretInTheLog(t *testing.T) {
	f := sqliteFixture(t)
	var logs lockedBuffer
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	url := "https://" + srv.Listener.Addr().String()
	c, err := New(context.Background(), Options{DB: f.c.db, Access: f.users, Backend: &refusingBackend{}, URL: url,
		Log: zerolog.New(&logs), Now: f.clock.now, Assets: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = c.Handler()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url, f.srv, f.c = url, srv, c
	b := f.browser(t)
	link := f.link(t, "alice")
	do(t, b, "GET", link, nil, map[string]string{"Sec-Fetch-Site": "cross-site"})
	do(t, b, "GET", link, nil, nil)
	do(t, b, "GET", link, nil, nil)
	me := f.me(t, b)
	u, _ := urlParse(f.url)
	secrets := []string{link[strings.LastIndex(link, "/")+1:], me.CSRF}
	for _, ck := range b.Jar.Cookies(u) {
		secrets = append(secrets, ck.Value)
	}
	if len(secrets) != 3 {
		t.Fatalf("jar %v", b.Jar.Cookies(u))
	}
	do(t, b, "POST", f.url+"/api/v1/admin/sessions", strings.NewReader("{}"), map[string]string{CSRFHeader: me.CSRF})
	do(t, b, "POST", f.url+"/logout", nil, map[string]string{CSRFHeader: me.CSRF})
	out := logs.String()
	if !strings.Contains(out, "console login") {
		t.Fatalf("no log at all? %s", out)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(out, s[5:]) {
			t.Errorf("the log has a secret: %s", out)
		}
	}
}

// Many browsers open the same link at once (a link seen by someone else, raced): exactly
// one gets a session, on every backend.
func TestLinkRacedOnce(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		f := newFixture(t, db)
		link := f.link(t, "alice")
		const n = 8
		statuses := make(chan int, n)
		var wg sync.WaitGroup
		for range n {
			b := f.browser(t)
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := b.Get(link)
				if err != nil {
					statuses <- 0
					return
				}
				resp.Body.Close()
				statuses <- resp.StatusCode
			}()
		}
		wg.Wait()
		close(statuses)
		won := 0
		for s := range statuses {
			switch s {
			case http.StatusSeeOther:
				won++
			case http.StatusUnauthorized, http.StatusServiceUnavailable: // lost the race (or a serialization failure)
			default:
				t.Errorf("HTTP %d", s)
			}
		}
		if won != 1 {
			t.Errorf("%d browsers logged in with one link", won)
		}
		var sessions int
		if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM console_sessions`).Scan(&sessions); err != nil || sessions != 1 {
			t.Errorf("%d sessions, %v", sessions, err)
		}
	})
}

// A link opened while its user is disabled spends the user's other links too: enabled
// again within their lifetime, none works.
func TestDisabledUsersLinkSpendsTheOthers(t *testing.T) {
	f := sqliteFixture(t)
	ctx := context.Background()
	first, second := f.link(t, "bob"), f.link(t, "bob")
	if err := f.users.SetDisabled(ctx, "bob", true); err != nil {
		t.Fatal(err)
	}
	if a := do(t, f.browser(t), "GET", first, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("disabled: HTTP %d", a.status)
	}
	if err := f.users.SetDisabled(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	if a := do(t, f.browser(t), "GET", second, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("the other link after enabling: HTTP %d", a.status)
	}
}
