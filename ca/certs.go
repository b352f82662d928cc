package ca

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// Certificate statuses.
const (
	StatusValid   = "valid"
	StatusRevoked = "revoked"
	StatusExpired = "expired"
)

// Record is an issued certificate with what the site knows about it.
type Record struct {
	Cert        *x509.Certificate
	Profile     Profile
	IssuedBy    string
	RenewedFrom string
	RevokedAt   *time.Time
	Reason      string
	Status      string
}

// Filter narrows List. Empty fields match everything.
type Filter struct {
	Status  string
	Profile Profile
	Limit   int // 0 means 1000
}

const recordQuery = `SELECT c.der, c.profile, c.issued_by, c.renewed_from, r.revoked_at, r.reason
	FROM certificates c LEFT JOIN revoked_certificates r ON r.serial = c.serial`

func (c *CA) scanRecord(row interface{ Scan(...any) error }) (Record, error) {
	var der []byte
	var rec Record
	var from, reason sql.NullString
	var revoked sql.NullInt64
	if err := row.Scan(&der, &rec.Profile, &rec.IssuedBy, &from, &revoked, &reason); err != nil {
		return Record{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Record{}, fmt.Errorf("parsing stored certificate: %w", err)
	}
	rec.Cert, rec.RenewedFrom, rec.Reason = cert, from.String, reason.String
	switch {
	case revoked.Valid:
		at := time.Unix(revoked.Int64, 0).UTC()
		rec.RevokedAt, rec.Status = &at, StatusRevoked
	case c.now().After(cert.NotAfter):
		rec.Status = StatusExpired
	default:
		rec.Status = StatusValid
	}
	return rec, nil
}

// Get returns the issued certificate with a decimal serial (wire.DecimalSerial reads the
// form people type).
func (c *CA) Get(ctx context.Context, serial string) (Record, error) {
	rec, err := c.scanRecord(c.db.QueryRow(ctx, recordQuery+` WHERE c.serial = ?`, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return Record{}, fmt.Errorf("%w: no certificate with serial %s", ErrNotFound, wire.FormatDecimalSerial(serial))
	}
	if err != nil {
		return Record{}, fmt.Errorf("reading certificate %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	return rec, nil
}

// List returns issued certificates, newest first.
func (c *CA) List(ctx context.Context, f Filter) ([]Record, error) {
	var where []string
	var args []any
	now := c.now().Unix()
	switch f.Status {
	case "":
	case StatusRevoked:
		where = append(where, "r.serial IS NOT NULL")
	case StatusExpired:
		where = append(where, "r.serial IS NULL AND c.not_after < ?")
		args = append(args, now)
	case StatusValid:
		where = append(where, "r.serial IS NULL AND c.not_after >= ?")
		args = append(args, now)
	default:
		return nil, fmt.Errorf("%w: status %q (valid, revoked or expired)", ErrBadProfile, f.Status)
	}
	if f.Profile != "" {
		where = append(where, "c.profile = ?")
		args = append(args, string(f.Profile))
	}
	q := recordQuery
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Limit <= 0 || f.Limit > 10000 {
		f.Limit = 1000
	}
	q += fmt.Sprintf(" ORDER BY c.created_at DESC, c.serial LIMIT %d", f.Limit)
	rows, err := c.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing certificates: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		rec, err := c.scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("listing certificates: %w", err)
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}
