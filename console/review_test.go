package console

import (
	"net/http"
	"strings"
	"testing"
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
