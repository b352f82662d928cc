package console

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// CookieName is the console's session cookie. The __Host- prefix makes the browser keep it
// only when it is Secure, has Path=/ and no Domain: no other host can set or read it.
const CookieName = "__Host-ibcm"

// CSRFHeader carries the CSRF token on every request other than GET and HEAD.
const CSRFHeader = "X-CSRF-Token"

// MaxAPIBody bounds a request body passed to the MP's API.
const MaxAPIBody = 64 << 10

// maxFormBody bounds the form body of POST /logout.
const maxFormBody = 4 << 10

// CSP is the Content-Security-Policy of every answer: the pages load only their own
// scripts, styles, images, fonts and connections, and nothing may frame them.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; " +
	"font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// shellPaths are the pages the JavaScript routes by location.pathname: each answers index.html.
var shellPaths = []string{"GET /{$}", "GET /devices", "GET /devices/{id}", "GET /sessions", "GET /sessions/{id}", "GET /sessions/{id}/live"}

// Handler returns the console listener's handler (server-only TLS in front of it).
//
//	GET  /healthz                 no session needed (ibcm site status)
//	GET  /login/{token}           a one-time link: sets the cookie, 303 to /devices
//	POST /logout                  CSRF: revokes the cookie session, 303 to /logged-out
//	GET  /logged-out              no session needed (logged-out.html of the built pages)
//	GET  /, /devices, /devices/{id}, /sessions, /sessions/{id}, /sessions/{id}/live: index.html
//	GET  /assets/{file...}        the built assets, no session needed
//	GET  /api/me                  who is logged in, with the CSRF token
//	     /api/v1/admin/...        Backend.ConsoleAPI(user), "/api" stripped
//	GET  /ws/...                  WebSockets of browser sessions (bridge.go)
//
// Every answer carries the CSP and the other security headers (securityHeaders).
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, http.StatusOK, wire.Health{Status: "ok", Role: "console"})
	})
	mux.HandleFunc("GET /login/{token}", c.handleLogin)
	mux.HandleFunc("GET /logged-out", func(w http.ResponseWriter, _ *http.Request) {
		if c.loggedOut != nil { // the built pages' own (console/web)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(c.loggedOut)
			return
		}
		writePage(w, http.StatusOK, pageLoggedOut, "")
	})
	mux.Handle("/logout", c.page(c.handleLogout))
	for _, p := range shellPaths {
		mux.Handle(p, c.page(func(w http.ResponseWriter, _ *http.Request, _ *session) error {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(c.index)
			return nil
		}))
	}
	// The assets are the same for everyone (no data in them): they need no session, so that
	// the logged-out and login pages have their stylesheet.
	mux.Handle("GET /assets/{file...}", api.Handle(c.log, c.serveAsset))
	mux.Handle("/api/me", c.api(c.handleMe))
	mux.Handle("/api/v1/admin/", c.api(c.handleAPI))
	mux.Handle("/api/", c.noRoute())
	c.bridgeRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writePage(w, http.StatusNotFound, pageNotFound, "")
	})
	return securityHeaders(mux)
}

// noRoute answers a method or path under /api/ or /ws/ that is not a route: a JSON 404
// (the pages' 404 is HTML).
func (c *Console) noRoute() http.Handler {
	return api.Handle(c.log, func(_ http.ResponseWriter, r *http.Request) error {
		return api.Errorf(http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path)
	})
}

// securityHeaders sets on every answer the CSP, nosniff, DENY framing, no referrer, HSTS,
// and no-store caching (but for the assets).
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Strict-Transport-Security", "max-age=31536000")
		if strings.HasPrefix(r.URL.Path, "/assets/") {
			h.Set("Cache-Control", "private, max-age=3600")
		} else {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// errLoginRequired answers an /api or /ws request without a live cookie session.
var errLoginRequired = api.Errorf(http.StatusUnauthorized, "login_required",
	"no console session (expired, revoked or logged out): run `ibcm console login` and open the URL it prints")

// sessionOf is sessionFrom for the WebSockets of bridge.go (authFunc), before the upgrade
// and at each keepalive: the user, the session's CSRF token and the serial of the
// certificate the login was made with.
func (c *Console) sessionOf(r *http.Request) (login, error) {
	s, err := c.sessionFrom(r)
	if err != nil {
		return login{}, err
	}
	return login{user: s.user, csrf: s.csrf, serial: s.serial}, nil
}

// login is who a cookie session is (sessionOf).
type login struct{ user, csrf, serial string }

// sessionFrom authenticates r to its cookie session, for every route but /login,
// /logged-out, /healthz and /assets: the cookie must name a live session (not expired, not
// revoked) whose user exists and is not disabled, read afresh on each call (lookup). Its
// errors are *api.Error (401 login_required, or 503 while the store is unavailable), ready
// for api.WriteError.
func (c *Console) sessionFrom(r *http.Request) (*session, error) {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return nil, errLoginRequired
	}
	s, err := c.lookup(r.Context(), ck.Value)
	if errors.Is(err, errNoSession) {
		return nil, errLoginRequired
	}
	if err != nil {
		if sitedb.IsUnavailable(err) {
			return nil, api.Unavailable(err)
		}
		return nil, err
	}
	return s, nil
}

// checkOrigin refuses (403 "origin") a request whose Origin header is not the console's
// origin exactly; with required, a request without one too (every WebSocket upgrade).
func (c *Console) checkOrigin(r *http.Request, required bool) error {
	o := r.Header.Values("Origin")
	switch {
	case len(o) == 0 && !required:
		return nil
	case len(o) == 1 && o[0] == c.origin:
		return nil
	}
	return api.Errorf(http.StatusForbidden, "origin", "the request's Origin is not the console's (%s)", c.origin)
}

// checkCSRF compares a CSRF token presented (header X-CSRF-Token, or the WebSockets'
// csrf query) with the session's, in constant time: 403 "csrf" when they differ.
func checkCSRF(want, got string) error {
	if got == "" || subtle.ConstantTimeCompare([]byte(want), []byte(got)) != 1 {
		return api.Errorf(http.StatusForbidden, "csrf", "missing or wrong %s: reload the page", CSRFHeader)
	}
	return nil
}

// stateChange checks a request other than GET and HEAD: the Origin (when present) must be
// the console's, and the CSRF token must be the session's (header, or for a form the
// field csrf when formField).
func (c *Console) stateChange(r *http.Request, s *session, formField bool) error {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	if err := c.checkOrigin(r, false); err != nil {
		return api.Errorf(http.StatusForbidden, "csrf", "%s", err.(*api.Error).Message)
	}
	got := r.Header.Get(CSRFHeader)
	if got == "" && formField && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		r.Body = http.MaxBytesReader(nil, r.Body, maxFormBody)
		if err := r.ParseForm(); err == nil {
			got = r.PostForm.Get("csrf")
		}
	}
	return checkCSRF(s.csrf, got)
}

// api wraps an /api route: JSON errors, a live session, CSRF on state changes.
func (c *Console) api(fn func(w http.ResponseWriter, r *http.Request, s *session) error) http.Handler {
	return api.Handle(c.log, func(w http.ResponseWriter, r *http.Request) error {
		s, err := c.sessionFrom(r)
		if err != nil {
			return err
		}
		if err := c.stateChange(r, s, false); err != nil {
			return err
		}
		return fn(w, r, s)
	})
}

// page wraps a page route: HTML errors, a live session, CSRF on state changes.
func (c *Console) page(fn func(w http.ResponseWriter, r *http.Request, s *session) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := c.sessionFrom(r)
		if err == nil {
			err = c.stateChange(r, s, true)
		}
		if err == nil {
			err = fn(w, r, s)
		}
		if err == nil {
			return
		}
		status := api.StatusOf(err)
		switch {
		case status == http.StatusUnauthorized:
			writePage(w, status, pageLoginNeeded, "Your console session has expired, was revoked, or you are not logged in.")
		case status < 500:
			var e *api.Error
			msg := "The request was refused."
			if errors.As(err, &e) {
				msg = e.Message
			}
			writePage(w, status, pageError, msg)
		default:
			c.log.Error().Err(err).Str("path", api.RedactPath(r.URL.Path)).Msg("console page")
			writePage(w, status, pageError, "The console could not answer; try again.")
		}
	})
}

func (c *Console) handleLogin(w http.ResponseWriter, r *http.Request) {
	// Link checkers and prefetchers (HEAD, Sec-Purpose) must not spend the link, nor may a
	// navigation that another page started: a site (or another server of this host, which
	// SameSite does not tell apart) could send the browser to the attacker's own link and
	// log the victim in as the attacker (login CSRF). Browsers mark a navigation from the
	// address bar, a terminal or another application "none"; one without Sec-Fetch-Site
	// (older browsers, command-line clients) is let in. None of these spends the link.
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writePage(w, http.StatusMethodNotAllowed, pageError, "Open the login link in your browser.")
		return
	}
	if !openedByUser(r) {
		c.log.Warn().Str("remote_addr", r.RemoteAddr).Str("sec_fetch_site", r.Header.Get("Sec-Fetch-Site")).
			Msg("console login link refused unspent: opened from another page or prefetched")
		writePage(w, http.StatusForbidden, pageError, "This login link was opened from another page, or prefetched. "+
			"Paste it into your browser's address bar: it is not spent, and works once until it expires.")
		return
	}
	user, secret, exp, err := c.useLink(r.Context(), r.PathValue("token"))
	if errors.Is(err, errLinkInvalid) {
		c.log.Warn().Str("remote_addr", r.RemoteAddr).Msg("console login link refused: invalid, used or expired")
		writePage(w, http.StatusUnauthorized, pageLoginNeeded, "This login link is invalid, expired or already used.")
		return
	}
	if err != nil {
		c.log.Error().Err(err).Msg("console login")
		writePage(w, http.StatusServiceUnavailable, pageError, "The console could not log you in; try again.")
		return
	}
	// The browser's previous session (this link replaces its cookie) ends: it would
	// otherwise stay usable beside the new one until it expires.
	if ck, err := r.Cookie(CookieName); err == nil {
		if old, err := parseSecret(ck.Value); err == nil {
			if err := c.revoke(r.Context(), hashOf(old)); err != nil {
				c.log.Warn().Err(err).Msg("ending the browser's previous console session")
			}
		}
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: encodeSecret(secret), Path: "/",
		MaxAge: max(1, int(exp.Sub(c.now())/time.Second)), Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	c.log.Info().Str("user", user).Time("expires_at", exp).Str("remote_addr", r.RemoteAddr).Msg("console login")
	http.Redirect(w, r, "/devices", http.StatusSeeOther)
}

// openedByUser tells whether a login link's request is a navigation the user started
// (Sec-Fetch-Site none, or same-origin from the console's own pages; absent in browsers
// that predate it) and no prefetch.
func openedByUser(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "none", "same-origin":
	default:
		return false
	}
	for _, h := range []string{"Sec-Purpose", "Purpose", "X-Purpose", "X-Moz"} {
		if strings.Contains(strings.ToLower(strings.Join(r.Header.Values(h), ",")), "prefetch") {
			return false
		}
	}
	return true
}

func (c *Console) handleLogout(w http.ResponseWriter, r *http.Request, s *session) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return api.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "log out with POST")
	}
	if err := c.revoke(r.Context(), s.hash); err != nil {
		return err
	}
	c.endLive(func(ls *liveSession) bool { return ls.user == s.user && ls.csrf == s.csrf }, "logged out")
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	c.log.Info().Str("user", s.user).Msg("console logout")
	http.Redirect(w, r, "/logged-out", http.StatusSeeOther)
	return nil
}

func (c *Console) serveAsset(w http.ResponseWriter, r *http.Request) error {
	name := "assets/" + r.PathValue("file")
	notFound := api.Errorf(http.StatusNotFound, "not_found", "no such asset")
	if !fs.ValidPath(name) || strings.HasSuffix(name, "/") {
		return notFound
	}
	f, err := c.assets.Open(name)
	if err != nil {
		return notFound
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.IsDir() { // no directory listing
		return notFound
	}
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		b, err := io.ReadAll(f)
		if err != nil {
			return err
		}
		rs = bytes.NewReader(b)
	}
	http.ServeContent(w, r, st.Name(), st.ModTime(), rs)
	return nil
}

// Me is the answer to GET /api/me.
type Me struct {
	User        string    `json:"user"`
	DisplayName string    `json:"display_name"`
	CSRF        string    `json:"csrf"`
	ExpiresAt   time.Time `json:"expires_at"`
	Permissions []string  `json:"permissions"` // site-wide (assignments over every device and the site)
}

func (c *Console) handleMe(w http.ResponseWriter, r *http.Request, s *session) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return api.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "GET /api/me")
	}
	g, err := c.access.Grants(r.Context(), s.user)
	if err != nil {
		return err
	}
	me := Me{User: s.user, DisplayName: s.displayName, CSRF: s.csrf, ExpiresAt: s.expiresAt, Permissions: []string{}}
	for _, p := range g.Site.List() {
		me.Permissions = append(me.Permissions, string(p))
	}
	api.WriteJSON(w, http.StatusOK, me)
	return nil
}

// handleAPI passes an admin call to the MP as the session's user, "/api" stripped, the
// body bounded, the console's own headers removed.
func (c *Console) handleAPI(w http.ResponseWriter, r *http.Request, s *session) error {
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/api")
	if r.URL.RawPath != "" {
		r2.URL.RawPath = strings.TrimPrefix(r.URL.RawPath, "/api")
	}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Body = http.MaxBytesReader(w, r.Body, MaxAPIBody)
	r2.Header.Del("Cookie")
	r2.Header.Del(CSRFHeader)
	sw := &statusWriter{ResponseWriter: w}
	c.backend.ConsoleAPI(s.user).ServeHTTP(sw, r2)
	// The MP logs a refusal without the user: through the console the request has no
	// client certificate to name them. The console names them, for the audit trail.
	if sw.status >= 400 {
		c.log.Warn().Str("user", s.user).Str("method", r.Method).Str("path", api.RedactPath(r2.URL.Path)).
			Str("remote_addr", r.RemoteAddr).Int("status", sw.status).Msg("console API call refused")
	}
	return nil
}

// statusWriter records the status of an answer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer (flushes).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// The server-rendered pages: the 401 page (#login-needed), the logged-out page (when the
// built pages have none), errors. No script; the built stylesheet when there is one.
const (
	pageLoginNeeded = "login-needed"
	pageLoggedOut   = "logged-out"
	pageNotFound    = "not-found"
	pageError       = "error"
)

var pages = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ibcm console</title>
<link rel="stylesheet" href="/assets/app.css">
</head>
<body>
<header class="top"><span class="brand">ibcm</span></header>
<main id="main">
{{- if eq .ID "login-needed"}}
<section id="login-needed" class="notice">
<h1>Log in to the ibcm console</h1>
<p>{{.Message}}</p>
<p>Run <code>ibcm console login</code> on your own machine (it uses your ibcm certificate) and open the one-time URL it prints within 5 minutes.</p>
</section>
{{- else if eq .ID "logged-out"}}
<section id="logged-out" class="notice">
<h1>Logged out</h1>
<p>Your console session has ended. To log in again, run <code>ibcm console login</code> and open the URL it prints.</p>
</section>
{{- else if eq .ID "not-found"}}
<section id="not-found" class="notice"><h1>Not found</h1><p>There is no such page. <a href="/devices">Devices</a></p></section>
{{- else}}
<section id="error-page" class="notice"><h1>Error</h1><p>{{.Message}}</p></section>
{{- end}}
</main>
</body>
</html>
`))

func writePage(w http.ResponseWriter, status int, id, msg string) {
	var b bytes.Buffer
	_ = pages.Execute(&b, struct{ ID, Message string }{id, msg})
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}
