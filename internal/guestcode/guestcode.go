// Package guestcode owns the security codes of Remote Help's "get a security code"
// (DESIGN.md §9 step 9): making a short one-time code for a helper, storing it only as its
// SHA-256 with the session it was made for (table security_codes), spending it once
// inside the transaction that records the guest certificate it is exchanged for, auditing
// every exchange attempt (security_code_attempts), and the rate limits that make a short
// code safe to expose. The MP makes codes (`ibcm remote code create`), the CA spends them
// (POST /v1/guest/exchange); neither imports the other, so what both need of the table is
// here.
//
// Why SHA-256 and not a slow password hash: a code lives 10 minutes, is spent once, and is
// guessed only through the CA's exchange route, whose attempts are limited per source
// address, per code and for the whole CA (Limiter). Someone who reads the table can try the
// code space offline, but the 31^10 ≈ 2^49.5 codes cost more than the 10 minutes a code
// lives are worth, and whoever reads the site database holds far more than a guest
// certificate of one view session anyway. A slow hash would instead make every legitimate
// exchange, and every refused guess, cost the CA CPU an attacker chooses to spend.
package guestcode

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrate applies the security codes' migrations (component "guestcode"). The MP and the
// CA both call it on start.
func Migrate(ctx context.Context, db *sitedb.DB) error {
	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		return err
	}
	return db.Migrate(ctx, "guestcode", ms)
}

// Alphabet is what a code is written with: digits and capitals without 0, O, 1, I and L,
// which people misread when one reads a code to another over the phone.
const Alphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"

// Length is a code's number of characters: 31^10 ≈ 2^49.5 codes.
const Length = 10

// TTL is how long a code stays usable.
const TTL = 10 * time.Minute

// Outcomes of an exchange, as the CA's API names them (HTTP status in the CA's httpError).
var (
	ErrInvalid     = errors.New("security code not valid")
	ErrExpired     = errors.New("security code expired")
	ErrUsed        = errors.New("security code already used")
	ErrRateLimited = errors.New("too many security code attempts")
)

// Audit outcomes (security_code_attempts.outcome).
const (
	OutcomeIssued      = "issued"
	OutcomeInvalid     = "code_invalid"
	OutcomeExpired     = "code_expired"
	OutcomeUsed        = "code_used"
	OutcomeRateLimited = "rate_limited"
)

// OutcomeOf names the audit outcome of an exchange's error (nil: issued).
func OutcomeOf(err error) string {
	switch {
	case err == nil:
		return OutcomeIssued
	case errors.Is(err, ErrExpired):
		return OutcomeExpired
	case errors.Is(err, ErrUsed):
		return OutcomeUsed
	case errors.Is(err, ErrRateLimited):
		return OutcomeRateLimited
	}
	return OutcomeInvalid
}

// New returns a fresh code, formatted XXXXX-XXXXX for reading aloud. It draws by rejection
// sampling, so every character of the alphabet is equally likely.
func New(rnd io.Reader) (string, error) {
	out := make([]byte, 0, Length+1)
	var b [1]byte
	for len(out) < Length+1 {
		if len(out) == Length/2 {
			out = append(out, '-')
			continue
		}
		if _, err := io.ReadFull(rnd, b[:]); err != nil {
			return "", fmt.Errorf("making a security code: %w", err)
		}
		if int(b[0]) >= 256/len(Alphabet)*len(Alphabet) {
			continue
		}
		out = append(out, Alphabet[int(b[0])%len(Alphabet)])
	}
	return string(out), nil
}

// Normalize reads a code as a person typed it: any case, with or without the dash or
// spaces. It refuses anything that cannot be a code (without saying which character, so
// the answer does not help a guesser more than a wrong code would).
func Normalize(s string) (string, error) {
	if len(s) > 4*Length {
		return "", fmt.Errorf("%w: malformed", ErrInvalid)
	}
	var b strings.Builder
	for _, r := range strings.ToUpper(s) {
		switch {
		case r == '-' || r == ' ':
			continue
		case r < 128 && strings.IndexByte(Alphabet, byte(r)) >= 0:
			b.WriteRune(r)
		default:
			return "", fmt.Errorf("%w: malformed (codes use %s)", ErrInvalid, Alphabet)
		}
	}
	if b.Len() != Length {
		return "", fmt.Errorf("%w: malformed (a code has %d characters)", ErrInvalid, Length)
	}
	return b.String(), nil
}

// Hash is the hex SHA-256 a normalised code is stored and looked up by.
func Hash(normalized string) string {
	h := sha256.Sum256([]byte("ibcm-security-code:" + normalized))
	return hex.EncodeToString(h[:])
}

// newID is the name logs and the audit give a code: random, so that it says nothing of the
// code (a prefix of the code's fast hash would let whoever reads a log search the code
// space offline).
func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making a security code id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Code is a stored code: never the code itself.
type Code struct {
	ID        string
	Session   string
	Helper    string
	Mode      string
	TicketID  string // the helper's leg of the session
	Ticket    string // signed (remote/ticket): the guest checks the helper's key with it
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
	Serial    string // the guest certificate's, once used
	Sharer    string
}

// Insert stores a code for session inside tx (the MP's, with the pending session).
func Insert(tx *sitedb.Tx, code string, c Code) (Code, error) {
	n, err := Normalize(code)
	if err != nil {
		return Code{}, err
	}
	h := Hash(n)
	if c.ID, err = newID(); err != nil {
		return Code{}, err
	}
	if _, err := tx.Exec(`INSERT INTO security_codes (id, hash, session_id, helper, mode, ticket_id, ticket, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, c.ID, h, c.Session, c.Helper, c.Mode, c.TicketID, c.Ticket, c.CreatedAt.Unix(), c.ExpiresAt.Unix()); err != nil {
		return Code{}, fmt.Errorf("storing the security code: %w", err)
	}
	return c, nil
}

const columns = `id, session_id, helper, mode, ticket_id, ticket, created_at, expires_at, used_at, used_serial, sharer`

func scan(row interface{ Scan(...any) error }) (Code, error) {
	var c Code
	var created, exp int64
	var used sql.NullInt64
	if err := row.Scan(&c.ID, &c.Session, &c.Helper, &c.Mode, &c.TicketID, &c.Ticket, &created, &exp, &used, &c.Serial, &c.Sharer); err != nil {
		return Code{}, err
	}
	c.CreatedAt, c.ExpiresAt = time.Unix(created, 0).UTC(), time.Unix(exp, 0).UTC()
	if used.Valid {
		at := time.Unix(used.Int64, 0).UTC()
		c.UsedAt = &at
	}
	return c, nil
}

// Lookup finds the code with hash and says whether it can still be spent: ErrInvalid
// (no such code), ErrUsed or ErrExpired. It returns the code in every case it found one.
func Lookup(ctx context.Context, db *sitedb.DB, hash string, now time.Time) (Code, error) {
	c, err := scan(db.QueryRow(ctx, `SELECT `+columns+` FROM security_codes WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return Code{}, fmt.Errorf("%w: no such code", ErrInvalid)
	}
	if err != nil {
		return Code{}, fmt.Errorf("reading the security code: %w", err)
	}
	return c, c.usable(now)
}

func (c Code) usable(now time.Time) error {
	switch {
	case c.UsedAt != nil:
		return fmt.Errorf("%w: code %s was used at %s", ErrUsed, c.ID, c.UsedAt.Format(time.RFC3339))
	case !now.Before(c.ExpiresAt):
		return fmt.Errorf("%w: code %s expired at %s", ErrExpired, c.ID, c.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

// OfSession returns the code made for session (ErrInvalid when there is none).
func OfSession(ctx context.Context, db *sitedb.DB, session string) (Code, error) {
	c, err := scan(db.QueryRow(ctx, `SELECT `+columns+` FROM security_codes WHERE session_id = ?`, session))
	if errors.Is(err, sql.ErrNoRows) {
		return Code{}, fmt.Errorf("%w: no code for session %s", ErrInvalid, session)
	}
	if err != nil {
		return Code{}, fmt.Errorf("reading the security code of session %s: %w", session, err)
	}
	return c, nil
}

// Spend marks the code with hash used by the guest certificate serial (decimal) inside tx,
// the transaction that records that certificate: the code is spent exactly when its
// certificate is recorded. A code spent or expired since Lookup is refused here.
func Spend(tx *sitedb.Tx, hash, serial, sharer string, now time.Time) error {
	res, err := tx.Exec(`UPDATE security_codes SET used_at = ?, used_serial = ?, sharer = ?
		WHERE hash = ? AND used_at IS NULL AND expires_at > ?`, now.Unix(), serial, sharer, hash, now.Unix())
	if err != nil {
		return fmt.Errorf("spending the security code: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return err
	}
	c, err := scan(tx.QueryRow(`SELECT `+columns+` FROM security_codes WHERE hash = ?`, hash))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := c.usable(now); err != nil {
		return err
	}
	return fmt.Errorf("%w: code %s", ErrUsed, c.ID)
}

// EndSession expires the unspent code of session inside tx, the transaction that ends the
// session (the MP's endSessions): a code dies with its session.
func EndSession(tx *sitedb.Tx, session string, now time.Time) error {
	if _, err := tx.Exec(`UPDATE security_codes SET expires_at = ? WHERE session_id = ? AND used_at IS NULL AND expires_at > ?`,
		now.Unix(), session, now.Unix()); err != nil {
		return fmt.Errorf("expiring the security code of session %s: %w", session, err)
	}
	return nil
}

// Audit records one exchange attempt. codeID is "" when no code matched.
func Audit(ctx context.Context, db *sitedb.DB, at time.Time, remoteAddr, codeID, outcome string) error {
	_, err := db.Exec(ctx, `INSERT INTO security_code_attempts (at, remote_addr, code_id, outcome) VALUES (?, ?, ?, ?)`,
		at.Unix(), remoteAddr, codeID, outcome)
	if err != nil {
		return fmt.Errorf("auditing a security code attempt: %w", err)
	}
	return nil
}

// Attempt is one audited exchange attempt.
type Attempt struct {
	At         time.Time
	RemoteAddr string
	CodeID     string
	Outcome    string
}

// Attempts returns the audited attempts since a time, oldest first.
func Attempts(ctx context.Context, db *sitedb.DB, since time.Time) ([]Attempt, error) {
	rows, err := db.Query(ctx, `SELECT at, remote_addr, code_id, outcome FROM security_code_attempts WHERE at >= ? ORDER BY at`, since.Unix())
	if err != nil {
		return nil, fmt.Errorf("reading security code attempts: %w", err)
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		var a Attempt
		var at int64
		if err := rows.Scan(&at, &a.RemoteAddr, &a.CodeID, &a.Outcome); err != nil {
			return nil, err
		}
		a.At = time.Unix(at, 0).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

// Purge deletes the codes that expired before cutoff and the attempts made before it (the
// MP calls it with the sessions' retention). It returns how many rows went.
func Purge(ctx context.Context, db *sitedb.DB, cutoff time.Time) (int64, error) {
	var n int64
	err := db.Tx(ctx, func(tx *sitedb.Tx) error {
		for _, q := range []string{`DELETE FROM security_codes WHERE expires_at < ?`, `DELETE FROM security_code_attempts WHERE at < ?`} {
			res, err := tx.Exec(q, cutoff.Unix())
			if err != nil {
				return fmt.Errorf("purging security codes: %w", err)
			}
			k, _ := res.RowsAffected()
			n += k
		}
		return nil
	})
	return n, err
}
