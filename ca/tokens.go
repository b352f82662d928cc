package ca

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// TokenPrefix starts every enrollment token secret, so a leaked one is easy to recognise.
const TokenPrefix = api.SecretPrefix

// Token is an enrollment token as stored: never its secret, only the secret's hash.
type Token struct {
	ID        string
	Profile   Profile
	Subject   string // when set, the only subject the token enrolls
	DeviceID  string // a re-enroll token: the existing device its certificate names
	Uses      int
	UsesLeft  int
	ExpiresAt time.Time
	CreatedAt time.Time
	CreatedBy string
	RevokedAt *time.Time
}

// TokenSpec is what a new token is bound to.
type TokenSpec struct {
	Profile Profile
	Subject string
	Uses    int           // 0 means 1
	TTL     time.Duration // 0 means 24h (ReenrollTTL for a re-enroll token)
	// DeviceID makes a re-enroll token for an existing device (`ibcm device unblock`): one
	// use, at most MaxReenrollTTL, client profile, bound to the device's registered name; the
	// certificate it enrolls names this device id, so the device keeps its id, groups and
	// history. No other token can name an existing device id.
	DeviceID string
}

// MaxTokenTTL bounds how long a token may stay usable.
const MaxTokenTTL = 366 * 24 * time.Hour

// ReenrollTTL is a re-enroll token's default lifetime, MaxReenrollTTL its longest.
const (
	ReenrollTTL    = time.Hour
	MaxReenrollTTL = 24 * time.Hour
)

// newSecret returns a 256-bit random secret and its hash.
func newSecret(rnd io.Reader) (secret, hash string, err error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(rnd, b); err != nil {
		return "", "", fmt.Errorf("making token: %w", err)
	}
	secret = TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, hashSecret(secret), nil
}

func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// CreateToken makes a token bound to spec and returns its secret, which is shown once and
// never stored.
func (c *CA) CreateToken(ctx context.Context, spec TokenSpec, by string) (string, Token, error) {
	if spec.Profile != Client && spec.Profile != Admin {
		return "", Token{}, fmt.Errorf("%w: enrollment tokens are for the client and admin profiles (got %q); site-server certificates are issued with `ibcm ca issue`", ErrBadProfile, spec.Profile)
	}
	if spec.Subject != "" {
		if err := CheckName(spec.Subject); err != nil {
			return "", Token{}, err
		}
	}
	if spec.DeviceID != "" {
		if err := c.reenrollSpec(ctx, &spec); err != nil {
			return "", Token{}, err
		}
	}
	if spec.Uses == 0 {
		spec.Uses = 1
	}
	if spec.Uses < 1 || spec.Uses > 1_000_000_000 {
		return "", Token{}, fmt.Errorf("%w: uses must be between 1 and 1000000000", ErrBadSubject)
	}
	if spec.TTL == 0 {
		spec.TTL = 24 * time.Hour
	}
	if spec.TTL < time.Second || spec.TTL > MaxTokenTTL {
		return "", Token{}, fmt.Errorf("%w: ttl must be between 1s and %s", ErrBadSubject, MaxTokenTTL)
	}
	secret, hash, err := newSecret(c.rand)
	if err != nil {
		return "", Token{}, err
	}
	now := c.now().UTC().Truncate(time.Second)
	t := Token{ID: hash[:16], Profile: spec.Profile, Subject: spec.Subject, DeviceID: spec.DeviceID, Uses: spec.Uses, UsesLeft: spec.Uses,
		ExpiresAt: now.Add(spec.TTL), CreatedAt: now, CreatedBy: by}
	err = c.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if t.DeviceID != "" {
			// Again under the device row's lock: a block revokes the device's re-enroll
			// tokens, so one stored while a block commits would outlive it.
			if err := c.store.checkDevice(tx.QueryRow, t.DeviceID, true); err != nil {
				return unwrapStep(err)
			}
			if err := c.store.checkNoLiveCertificate(tx.QueryRow, t.DeviceID, now); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(`INSERT INTO enrollment_tokens
			(id, hash, profile, subject, device_id, uses, uses_left, expires_at, created_at, created_by)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			t.ID, hash, string(t.Profile), t.Subject, t.DeviceID, t.Uses, t.UsesLeft, t.ExpiresAt.Unix(), t.CreatedAt.Unix(), by); err != nil {
			return err
		}
		for i := range tokenShards {
			n := t.Uses/tokenShards + min(max(t.Uses%tokenShards-i, 0), 1)
			if _, err := tx.Exec(`INSERT INTO enrollment_token_shards (token_id, shard, uses_left) VALUES (?, ?, ?)`, t.ID, i, n); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrDeviceBlocked) {
		return "", Token{}, err
	}
	if err != nil {
		return "", Token{}, fmt.Errorf("storing token: %w", err)
	}
	return secret, t, nil
}

// reenrollSpec checks and completes the spec of a re-enroll token: the device must be
// registered and not blocked; the token has one use, a short life, the client profile and
// the device's registered name.
func (c *CA) reenrollSpec(ctx context.Context, spec *TokenSpec) error {
	if spec.Profile != Client {
		return fmt.Errorf("%w: a re-enroll token is for the client profile (got %q)", ErrBadProfile, spec.Profile)
	}
	if spec.Uses > 1 {
		return fmt.Errorf("%w: a re-enroll token has one use (got %d)", ErrBadSubject, spec.Uses)
	}
	if spec.TTL == 0 {
		spec.TTL = ReenrollTTL
	}
	if spec.TTL > MaxReenrollTTL {
		return fmt.Errorf("%w: a re-enroll token lives at most %s (got %s)", ErrBadSubject, MaxReenrollTTL, spec.TTL)
	}
	name, err := c.store.deviceName(ctx, spec.DeviceID)
	if err != nil {
		return err
	}
	if spec.Subject != "" && spec.Subject != name {
		return fmt.Errorf("%w: device %s is named %q; a re-enroll token keeps its name (got %q)", ErrSubjectMismatch, spec.DeviceID, name, spec.Subject)
	}
	spec.Subject = name
	return nil
}

// tokenShards is how many rows a new token's uses are split over (003_tokens.sql).
const tokenShards = 4

const tokenColumns = `id, profile, subject, device_id, uses,
	(SELECT COALESCE(SUM(s.uses_left), 0) FROM enrollment_token_shards s WHERE s.token_id = enrollment_tokens.id),
	expires_at, created_at, created_by, revoked_at`

func scanToken(row interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var exp, created int64
	var revoked sql.NullInt64
	if err := row.Scan(&t.ID, &t.Profile, &t.Subject, &t.DeviceID, &t.Uses, &t.UsesLeft, &exp, &created, &t.CreatedBy, &revoked); err != nil {
		return Token{}, err
	}
	t.ExpiresAt, t.CreatedAt = time.Unix(exp, 0).UTC(), time.Unix(created, 0).UTC()
	if revoked.Valid {
		at := time.Unix(revoked.Int64, 0).UTC()
		t.RevokedAt = &at
	}
	return t, nil
}

// ListTokens returns every token, newest first.
func (c *CA) ListTokens(ctx context.Context) ([]Token, error) {
	rows, err := c.db.Query(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens ORDER BY created_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("listing tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("listing tokens: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken makes a token unusable.
func (c *CA) RevokeToken(ctx context.Context, id string) error {
	if strings.HasPrefix(id, TokenPrefix) { // never echo a secret back
		return fmt.Errorf("%w: that is a token's secret, not its id; use the id `ibcm ca token list` shows", ErrNotFound)
	}
	res, err := c.db.Exec(ctx, `UPDATE enrollment_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`,
		c.now().Unix(), strings.ToLower(id))
	if err != nil {
		return fmt.Errorf("revoking token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("token %q: %w (or already revoked)", id, ErrNotFound)
	}
	c.tokens.forget(strings.ToLower(id))
	return nil
}

// lookupToken finds a token by its secret and checks that it can still enroll. What a
// token is bound to never changes, so it is remembered by the secret's hash: a bulk
// token's devices then cost no read. Whether it may still be used (uses, revocation,
// expiry) is checked again by the transaction that consumes it (consumeToken).
func (c *CA) lookupToken(ctx context.Context, secret string) (Token, error) {
	if !strings.HasPrefix(secret, TokenPrefix) || len(secret) > 128 {
		return Token{}, fmt.Errorf("%w: malformed token", ErrTokenInvalid)
	}
	hash := hashSecret(secret)
	if t, ok := c.tokens.get(hash); ok {
		return t, t.usable(c.now())
	}
	t, err := scanToken(c.db.QueryRow(ctx, `SELECT `+tokenColumns+` FROM enrollment_tokens WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, fmt.Errorf("%w: unknown token", ErrTokenInvalid)
	}
	if err != nil {
		return Token{}, fmt.Errorf("reading token: %w", err)
	}
	if err := t.usable(c.now()); err != nil {
		return Token{}, err
	}
	c.tokens.put(hash, t)
	return t, nil
}

// maxCachedTokens bounds the tokens lookupToken remembers; past it, it starts afresh.
const maxCachedTokens = 10000

// tokenCache holds usable tokens by the hash of their secret. A token is forgotten when
// this CA revokes it or a transaction refuses it, so the next request is refused before
// signing; another server's revocation is caught by the consuming transaction.
type tokenCache struct {
	mu sync.Mutex
	m  map[string]Token
}

func (tc *tokenCache) get(hash string) (Token, bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	t, ok := tc.m[hash]
	return t, ok
}

func (tc *tokenCache) put(hash string, t Token) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.m == nil || len(tc.m) >= maxCachedTokens {
		tc.m = map[string]Token{}
	}
	t.UsesLeft = 1 // not tracked here; the consuming transaction decides
	tc.m[hash] = t
}

func (tc *tokenCache) forget(id string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	for h, t := range tc.m {
		if t.ID == id {
			delete(tc.m, h)
		}
	}
}

func (t Token) usable(now time.Time) error {
	switch {
	case t.RevokedAt != nil:
		return fmt.Errorf("%w: token %s was revoked", ErrTokenRevoked, t.ID)
	case t.UsesLeft <= 0:
		return fmt.Errorf("%w: token %s has no uses left", ErrTokenUsed, t.ID)
	case !now.Before(t.ExpiresAt):
		return fmt.Errorf("%w: token %s expired at %s", ErrTokenExpired, t.ID, t.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

// consumeToken spends one use of a token inside the transaction that records the
// certificate: from shard prefer when it has one, else from another. When transactions
// race for the last uses, a shard's update matches only while it has one left; one that
// lost its shard to another transaction looks again while the token has uses left.
func consumeToken(tx *sitedb.Tx, id string, prefer int, now time.Time) error {
	for range 2 * tokenShards {
		res, err := tx.Exec(`UPDATE enrollment_token_shards SET uses_left = uses_left - 1
			WHERE token_id = ? AND uses_left > 0 AND shard = (SELECT shard FROM enrollment_token_shards
				WHERE token_id = ? AND uses_left > 0 ORDER BY CASE WHEN shard = ? THEN 0 ELSE 1 END, shard LIMIT 1)
			AND EXISTS (SELECT 1 FROM enrollment_tokens WHERE id = ? AND revoked_at IS NULL AND expires_at > ?)`,
			id, id, prefer, id, now.Unix())
		if err != nil {
			return fmt.Errorf("consuming token: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		t, err := scanToken(tx.QueryRow(`SELECT `+tokenColumns+` FROM enrollment_tokens WHERE id = ?`, id))
		if err != nil {
			return fmt.Errorf("%w: token %s: %v", ErrTokenInvalid, id, err)
		}
		if err := t.usable(now); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: token %s: its last uses are being spent by other enrollments", ErrTokenUsed, id)
}
