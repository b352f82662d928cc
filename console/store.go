package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrate creates or updates the console's tables (console_links, console_sessions).
func Migrate(ctx context.Context, db *sitedb.DB) error {
	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		return err
	}
	return db.Migrate(ctx, "console", ms)
}

// Lifetimes of a login link and of the cookie session it opens.
const (
	LinkLifetime    = 5 * time.Minute
	SessionLifetime = 8 * time.Hour
)

// secretLen is the random bytes of a link token and of a cookie secret.
const secretLen = 32

// linkPrefix starts every link token: api.RedactPath keeps such path segments out of logs.
const linkPrefix = api.SecretPrefix

// encodedLen is the base64url length (no padding) of secretLen bytes.
var encodedLen = base64.RawURLEncoding.EncodedLen(secretLen)

// ErrBadToken is a link token or cookie value that is not one this package makes.
var ErrBadToken = errors.New("malformed token")

func newSecret() []byte {
	b := make([]byte, secretLen)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return b
}

// encodeSecret is the text form of a secret (a cookie value; a link token after its prefix).
func encodeSecret(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// parseSecret reads a cookie value: exactly the base64url (no padding) of 32 bytes.
func parseSecret(s string) ([]byte, error) {
	if len(s) != encodedLen {
		return nil, ErrBadToken
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != secretLen {
		return nil, ErrBadToken
	}
	return b, nil
}

// parseLinkToken reads a link token: "ibcm_" and the base64url of 32 bytes.
func parseLinkToken(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, linkPrefix)
	if !ok {
		return nil, ErrBadToken
	}
	return parseSecret(rest)
}

// hashOf is what the store keeps of a secret.
func hashOf(secret []byte) string {
	h := sha256.Sum256(secret)
	return hex.EncodeToString(h[:])
}

// csrfOf is the CSRF token of a cookie session: base64url(HMAC-SHA256(secret, "csrf")).
// Nothing stores it: each request recomputes it from its cookie.
func csrfOf(secret []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("csrf"))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// session is one live cookie session.
type session struct {
	user        string
	displayName string // the user's, as lookup read them
	csrf        string
	serial      string // of the certificate the login was made with
	expiresAt   time.Time
	hash        string
}

// createLink records a new one-time link for user and returns its token.
func (c *Console) createLink(ctx context.Context, user, serial string, certExpires time.Time) (string, time.Time, error) {
	if serial == "" {
		return "", time.Time{}, errors.New("a console link needs the serial of the certificate that asked for it")
	}
	u, err := c.access.User(ctx, user)
	if errors.Is(err, access.ErrUnknownUser) {
		return "", time.Time{}, api.Errorf(http.StatusForbidden, "unknown_user", "user %q is not a user of this site", user)
	}
	if err != nil {
		return "", time.Time{}, err
	}
	if u.DisabledAt != nil {
		return "", time.Time{}, api.Errorf(http.StatusForbidden, "user_disabled", "user %q is disabled", user)
	}
	secret := newSecret()
	now := c.now()
	exp := now.Add(LinkLifetime)
	if _, err := c.db.Exec(ctx, `INSERT INTO console_links (hash, user_name, created_at, expires_at, serial, cert_expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
		hashOf(secret), user, now.Unix(), exp.Unix(), serial, certExpires.Unix()); err != nil {
		return "", time.Time{}, fmt.Errorf("recording a console link: %w", err)
	}
	return linkPrefix + encodeSecret(secret), exp.UTC().Truncate(time.Second), nil
}

// errLinkInvalid is a link that is unknown, used or expired.
var errLinkInvalid = errors.New("login link invalid, used or expired")

// useLink spends a link token (once) and opens a cookie session for its user, who must still
// be a user of the site and not disabled: it returns the cookie's secret.
func (c *Console) useLink(ctx context.Context, token string) (user string, secret []byte, exp time.Time, err error) {
	raw, err := parseLinkToken(token)
	if err != nil {
		return "", nil, time.Time{}, errLinkInvalid
	}
	now := c.now()
	secret = newSecret()
	exp = now.Add(SessionLifetime)
	err = c.db.Tx(ctx, func(tx *sitedb.Tx) error {
		h := hashOf(raw)
		var serial string
		var certExpires int64
		if err := tx.QueryRow(`SELECT user_name, serial, cert_expires_at FROM console_links WHERE hash = ? AND used_at IS NULL AND expires_at > ?`, h, now.Unix()).Scan(&user, &serial, &certExpires); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return errLinkInvalid
			}
			return err
		}
		res, err := tx.Exec(`UPDATE console_links SET used_at = ? WHERE hash = ? AND used_at IS NULL`, now.Unix(), h)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 { // spent by another request meanwhile
			return errors.Join(err, errLinkInvalid)
		}
		if c.backend.CertificateRevoked(serial) || certExpires <= now.Unix() {
			return errLinkInvalid // spent all the same: the certificate that made it is revoked or expired
		}
		if ce := time.Unix(certExpires, 0); ce.Before(exp) {
			exp = ce // the session ends with the certificate at the latest
		}
		_, err = tx.Exec(`INSERT INTO console_sessions (hash, user_name, created_at, expires_at, serial) VALUES (?, ?, ?, ?, ?)`,
			hashOf(secret), user, now.Unix(), exp.Unix(), serial)
		return err
	})
	if err != nil {
		return "", nil, time.Time{}, err
	}
	// A user disabled (or deleted) since the link was made gets no session: it is ended at
	// once, and with a disabled user's other sessions and links, for good (as lookup does).
	if u, uerr := c.access.User(ctx, user); uerr != nil || u.DisabledAt != nil {
		_ = c.revoke(ctx, hashOf(secret))
		if uerr == nil {
			_, _ = c.revokeUser(ctx, user)
		}
		return "", nil, time.Time{}, errLinkInvalid
	}
	return user, secret, exp, nil
}

// errNoSession is a request without a live cookie session.
var errNoSession = errors.New("no live console session")

// lookup returns the live session of a cookie value: known, not revoked, not expired, and
// its user exists and is not disabled (read on each request).
func (c *Console) lookup(ctx context.Context, cookie string) (*session, error) {
	secret, err := parseSecret(cookie)
	if err != nil {
		return nil, errNoSession
	}
	s := &session{hash: hashOf(secret), csrf: csrfOf(secret)}
	var exp int64
	var serial string
	err = c.db.QueryRow(ctx, `SELECT user_name, expires_at, serial FROM console_sessions WHERE hash = ? AND revoked_at IS NULL AND expires_at > ?`,
		s.hash, c.now().Unix()).Scan(&s.user, &exp, &serial)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, fmt.Errorf("reading the console session: %w", err)
	}
	s.expiresAt, s.serial = time.Unix(exp, 0).UTC(), serial
	if c.backend.CertificateRevoked(serial) {
		// The certificate the login was made with is revoked (a stolen laptop): the session
		// ends with it, as that certificate's own connections do.
		if err := c.revoke(ctx, s.hash); err != nil {
			c.log.Warn().Err(err).Str("user", s.user).Msg("ending a console session of a revoked certificate")
		}
		return nil, errNoSession
	}
	u, err := c.access.User(ctx, s.user)
	if errors.Is(err, access.ErrUnknownUser) || (err == nil && u.DisabledAt != nil) {
		// Ended for good, with the user's other sessions and links: enabling the user again
		// must not bring them back (a stolen cookie would live again).
		if _, err := c.revokeUser(ctx, s.user); err != nil {
			c.log.Warn().Err(err).Str("user", s.user).Msg("ending the console sessions of a disabled user")
		}
		return nil, errNoSession
	}
	if err != nil {
		return nil, err
	}
	s.displayName = u.DisplayName
	return s, nil
}

// revoke ends one cookie session.
func (c *Console) revoke(ctx context.Context, hash string) error {
	_, err := c.db.Exec(ctx, `UPDATE console_sessions SET revoked_at = ? WHERE hash = ? AND revoked_at IS NULL`, c.now().Unix(), hash)
	if err != nil {
		return fmt.Errorf("revoking the console session: %w", err)
	}
	return nil
}

// Purge deletes the links that expired or were used and the cookie sessions that expired
// or were revoked; Run calls it on a schedule.
func (c *Console) Purge(ctx context.Context) (int64, error) {
	var n int64
	now := c.now().Unix()
	err := c.db.Tx(ctx, func(tx *sitedb.Tx) error {
		n = 0
		for _, q := range []string{
			`DELETE FROM console_links WHERE expires_at <= ? OR used_at IS NOT NULL`,
			`DELETE FROM console_sessions WHERE expires_at <= ? OR revoked_at IS NOT NULL`,
		} {
			res, err := tx.Exec(q, now)
			if err != nil {
				return err
			}
			k, _ := res.RowsAffected()
			n += k
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("purging console links and sessions: %w", err)
	}
	return n, nil
}

// endDisabledUsers ends the console sessions and links of every disabled user, so that none
// comes back when the user is enabled again, even one no request used while they were
// disabled (Run calls it on its schedule; lookup ends those it meets at once).
func (c *Console) endDisabledUsers(ctx context.Context) error {
	users, err := c.access.Users(ctx)
	if err != nil {
		return fmt.Errorf("listing the users: %w", err)
	}
	for _, u := range users {
		if u.DisabledAt == nil {
			continue
		}
		n, err := c.revokeUser(ctx, u.Name)
		if err != nil {
			return err
		}
		if n > 0 {
			c.log.Info().Str("user", u.Name).Int("sessions", n).Msg("console sessions of a disabled user ended")
		}
	}
	return nil
}
