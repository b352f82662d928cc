// Package console owns the web console (DESIGN.md §9 step 9): the console listener's
// handler (server-only TLS: browsers have no client certificate), one-time login links and
// the cookie sessions they open, CSRF and Origin checks, the Content-Security-Policy, the
// pages' shell and assets (console/web), the /api calls it passes to the management point
// through the same access checks as the command line, and the WebSockets that carry a
// browser's remote-control session (bridge*.go), which ends at the MP.
//
// It does not import mp (nor mp it): site/mp.go (openMP) hands each its Backend and ConsoleLinks.
package console

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/console/web"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// Backend is what the console needs of the management point.
type Backend interface {
	// ConsoleAPI serves one allowlisted admin call for user (already authenticated by the
	// console's cookie), through the same guards as a call with a user certificate. The
	// request path is the MP's ("/v1/admin/devices"): the console strips "/api".
	ConsoleAPI(user string) http.Handler
	// DialSession reaches the device of session id for user over the MP's relay, the MP
	// being the helper's end of the end-to-end TLS (the ticket was issued to the console),
	// and returns the established inner TLS connection.
	DialSession(ctx context.Context, user, sessionID, ticketID string) (net.Conn, error)
	// CertificateRevoked says whether the certificate of serial (decimal) is revoked: a
	// console login lives no longer than the certificate that made it.
	CertificateRevoked(serial string) bool
}

// Options configure the console.
type Options struct {
	DB      *sitedb.DB
	Access  *access.Store // the site's users: a disabled or deleted user's session stops working
	Backend Backend
	// URL is how browsers reach the console listener (mp.console_url): the login links
	// start with it, and its scheme://host[:port] is the only Origin accepted.
	URL string
	Log zerolog.Logger
	Now func() time.Time
	// Assets are the built pages (index.html, optionally logged-out.html, assets/); web.Dist's
	// "dist" when nil.
	Assets fs.FS
	// PurgeEvery is how often Run deletes expired links and sessions; 10 minutes when zero.
	PurgeEvery time.Duration
}

// Console is the web console of one MP.
type Console struct {
	db        *sitedb.DB
	access    *access.Store
	backend   Backend
	url       string // without a trailing slash
	origin    string // scheme://host[:port] of url
	log       zerolog.Logger
	now       func() time.Time
	assets    fs.FS
	index     []byte // index.html, read once
	loggedOut []byte // logged-out.html when the built pages have one
	purge     time.Duration
}

// New applies the console's migrations and returns it.
func New(ctx context.Context, o Options) (*Console, error) {
	if o.DB == nil || o.Access == nil || o.Backend == nil {
		return nil, errors.New("console: DB, Access and Backend are required")
	}
	origin, err := Origin(o.URL)
	if err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PurgeEvery <= 0 {
		o.PurgeEvery = 10 * time.Minute
	}
	if o.Assets == nil {
		if o.Assets, err = fs.Sub(web.Dist, "dist"); err != nil {
			return nil, fmt.Errorf("console: the built pages: %w", err)
		}
	}
	index, err := fs.ReadFile(o.Assets, "index.html")
	if err != nil {
		return nil, fmt.Errorf("console: the built pages have no index.html: %w", err)
	}
	loggedOut, _ := fs.ReadFile(o.Assets, "logged-out.html")
	if err := Migrate(ctx, o.DB); err != nil {
		return nil, err
	}
	return &Console{db: o.DB, access: o.Access, backend: o.Backend, url: strings.TrimSuffix(o.URL, "/"), origin: origin,
		log: o.Log, now: o.Now, assets: o.Assets, index: index, loggedOut: loggedOut, purge: o.PurgeEvery}, nil
}

// Origin returns the browser origin (scheme://host[:port], as a browser sends it: lower
// case, no :443) of a console URL, which must be an absolute https URL without user, path,
// query or fragment.
func Origin(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("console URL %q: must be https://host[:port] with no path", rawURL)
	}
	host := strings.ToLower(u.Host)
	if h, port, err := net.SplitHostPort(host); err == nil && port == "443" { // browsers leave the default port out
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	return "https://" + host, nil
}

// CreateLink makes a one-time login URL for user, asked with cert, valid LinkLifetime (it
// implements the MP's ConsoleLinks). An unknown or disabled user gets none. The link, and
// the session it opens, end when cert is revoked, and the session when it expires.
func (c *Console) CreateLink(ctx context.Context, user string, cert *x509.Certificate) (string, time.Time, error) {
	if cert == nil || cert.SerialNumber == nil {
		return "", time.Time{}, errors.New("a console link needs the certificate that asked for it")
	}
	token, exp, err := c.createLink(ctx, user, cert.SerialNumber.String(), cert.NotAfter)
	if err != nil {
		return "", time.Time{}, err
	}
	c.log.Info().Str("user", user).Time("expires_at", exp).Msg("console login link made")
	return c.url + "/login/" + token, exp, nil
}

// RevokeUser ends every console session of user and spends their unused links; it returns
// how many sessions it ended (it implements the MP's ConsoleLinks).
func (c *Console) RevokeUser(ctx context.Context, user string) (int, error) {
	n, err := c.revokeUser(ctx, user)
	if err != nil {
		return 0, err
	}
	c.log.Info().Str("user", user).Int("sessions", n).Msg("console sessions revoked")
	return n, nil
}

func (c *Console) revokeUser(ctx context.Context, user string) (int, error) {
	now := c.now().Unix()
	var n int64
	err := c.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if _, err := tx.Exec(`UPDATE console_links SET used_at = ? WHERE user_name = ? AND used_at IS NULL`, now, user); err != nil {
			return err
		}
		res, err := tx.Exec(`UPDATE console_sessions SET revoked_at = ? WHERE user_name = ? AND revoked_at IS NULL AND expires_at > ?`, now, user, now)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("revoking the console sessions of %q: %w", user, err)
	}
	c.endLive(func(ls *liveSession) bool { return ls.user == user }, "the user's console sessions were revoked")
	return int(n), nil
}

// Run ends the sessions and links of disabled users and deletes expired and spent links and
// sessions, at once and every Options.PurgeEvery, and ends the live browser sessions of
// revoked certificates every second (endRevoked), until ctx is done.
func (c *Console) Run(ctx context.Context) {
	go func() { // live browser sessions of revoked certificates end within a second
		t := time.NewTicker(revokedCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if n := c.endRevoked(); n > 0 {
					c.log.Info().Int("sessions", n).Msg("live console sessions of a revoked certificate ended")
				}
			}
		}
	}()
	t := time.NewTicker(c.purge)
	defer t.Stop()
	for {
		if err := c.endDisabledUsers(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn().Err(err).Msg("ending the console sessions of disabled users")
		}
		if n, err := c.Purge(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn().Err(err).Msg("purging console links and sessions")
		} else if n > 0 {
			c.log.Debug().Int64("rows", n).Msg("expired console links and sessions purged")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
