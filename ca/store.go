package ca

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"
	"golang.org/x/crypto/ssh"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrate creates or updates the CA's tables in the site database.
func Migrate(ctx context.Context, db *sitedb.DB) error {
	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		return err
	}
	if err := db.Migrate(ctx, "ca", ms); err != nil {
		return err
	}
	return db.Tx(ctx, fillKeyHashes)
}

// keyHash is how the CA names a public key: the SHA-256 of its SubjectPublicKeyInfo, hex.
func keyHash(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// fillKeyHashes writes certificates.spki_sha256 where it is missing: rows recorded before
// migration 004, or by an older CA server of the site since.
func fillKeyHashes(tx *sitedb.Tx) error {
	rows, err := tx.Query(`SELECT serial, der FROM certificates WHERE spki_sha256 IS NULL`)
	if err != nil {
		return fmt.Errorf("reading certificates without a key hash: %w", err)
	}
	fill := map[string]string{}
	for rows.Next() {
		var serial string
		var der []byte
		if err := rows.Scan(&serial, &der); err != nil {
			rows.Close()
			return fmt.Errorf("reading certificates without a key hash: %w", err)
		}
		// One the parser refuses gets '' (no key to match): it must not stop the CA
		// from starting, nor a keyCompromise revocation.
		fill[serial] = ""
		if c, err := x509.ParseCertificate(der); err == nil {
			fill[serial] = keyHash(c.RawSubjectPublicKeyInfo)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading certificates without a key hash: %w", err)
	}
	for serial, h := range fill {
		if _, err := tx.Exec(`UPDATE certificates SET spki_sha256 = ? WHERE serial = ?`, h, serial); err != nil {
			return fmt.Errorf("recording the key hash of %s: %w", wire.FormatDecimalSerial(serial), err)
		}
	}
	return nil
}

// store holds all of the CA's SQL. It implements smallstep's database interfaces so the
// embedded authority reads and writes certificates, revocations and CRLs in our tables.
type store struct {
	db       *sitedb.DB
	issuerID string
	now      func() time.Time
	issued   issued // group commit of new certificates (issued.go)

	devicesExist atomic.Bool // the MP's devices table was found (see checkDevice)
	reenrolling  reenrolling // devices being re-enrolled now (issued.go)
}

var (
	_ stepdb.AuthDB                      = (*store)(nil)
	_ stepdb.CertificateRevocationListDB = (*store)(nil)
	_ interface {
		StoreCertificateChain(provisioner.Interface, ...*x509.Certificate) error
	} = (*store)(nil)
)

// smallstep's interfaces carry no context; its calls get this much time.
const storeTimeout = 15 * time.Second

func (s *store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), storeTimeout)
}

// registerCA records a CA certificate of the site (idempotent).
func (s *store) registerCA(ctx context.Context, kind string, c *x509.Certificate) error {
	_, err := s.db.Exec(ctx, `INSERT INTO ca_certificates (id, kind, der, not_after, created_at)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		IssuerID(c), kind, c.Raw, c.NotAfter.Unix(), s.now().Unix())
	if err != nil {
		return fmt.Errorf("recording %s CA certificate: %w", kind, err)
	}
	return nil
}

func insertCert(tx *sitedb.Tx, c *x509.Certificate, issuerID, issuedBy, renewedFrom string, now time.Time) error {
	var from any
	if renewedFrom != "" {
		from = renewedFrom
	}
	_, err := tx.Exec(`INSERT INTO certificates
		(serial, profile, subject, issuer_id, not_before, not_after, der, issued_by, renewed_from, created_at, spki_sha256)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.SerialNumber.String(), string(ProfileOf(c)), c.Subject.CommonName, issuerID,
		c.NotBefore.Unix(), c.NotAfter.Unix(), c.Raw, issuedBy, from, now.Unix(), keyHash(c.RawSubjectPublicKeyInfo))
	if err != nil {
		return fmt.Errorf("recording certificate %s: %w", wire.FormatSerial(c.SerialNumber), err)
	}
	return nil
}

// StoreCertificateChain records a newly signed certificate. The provisioner's ID says who
// authorized it; for "token:<id>" the token is consumed in the same transaction, so a
// token can never be spent without its certificate being recorded, nor twice. For
// "renew:<old serial>" the certificate is recorded as the one successor of old (see
// storeRenewal).
func (s *store) StoreCertificateChain(p provisioner.Interface, chain ...*x509.Certificate) error {
	by := "ca"
	if p != nil {
		by = p.GetID()
	}
	if hash, ok := strings.CutPrefix(by, "guest:"); ok {
		return s.storeGuest(hash, chain[0])
	}
	if old, ok := strings.CutPrefix(by, "renew:"); ok {
		ctx, cancel := s.ctx()
		defer cancel()
		return s.db.Tx(ctx, func(tx *sitedb.Tx) error { return s.storeRenewal(tx, old, chain[0]) })
	}
	return s.record(chain[0], by) // enrollments and admin issues: group commit (issued.go)
}

// GetCertificate returns the issued certificate with a decimal serial.
func (s *store) GetCertificate(serial string) (*x509.Certificate, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	return s.certificate(ctx, serial)
}

func (s *store) certificate(ctx context.Context, serial string) (*x509.Certificate, error) {
	var der []byte
	err := s.db.QueryRow(ctx, `SELECT der FROM certificates WHERE serial = ?`, serial).Scan(&der)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("certificate %s: %w", wire.FormatDecimalSerial(serial), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	return x509.ParseCertificate(der)
}

// IsRevoked reports whether a decimal serial is revoked.
func (s *store) IsRevoked(serial string) (bool, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	var n int
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM revoked_certificates WHERE serial = ?`, serial).Scan(&n)
	return n > 0, err
}

// Revoke records a revocation for smallstep's interface (the CA revokes through revoke,
// which says what it did).
func (s *store) Revoke(rci *stepdb.RevokedCertificateInfo) error {
	ctx, cancel := s.ctx()
	defer cancel()
	_, err := s.revoke(ctx, rci, false)
	if errors.Is(err, ErrAlreadyRevoked) {
		return stepdb.ErrAlreadyExists
	}
	return err
}

// revokeOutcome says what one revocation did besides revoking its certificate.
type revokeOutcome struct {
	// ChangedFrom is the earlier reason of a certificate already revoked that a
	// keyCompromise revocation changed to keyCompromise.
	ChangedFrom string
	// Also lists the other certificates revoked with it, or whose reason it changed to
	// keyCompromise (decimal serials).
	Also []string
}

// revoke records a revocation and announces it on trust.RevokedChannel in the same
// transaction, so every server's revoked set learns of it as soon as it is committed.
//
// With successors (always for keyCompromise) it also revokes, in the same transaction and
// with the same reason, every unexpired certificate renewed from this one, transitively:
// whoever holds its key may have renewed it; the device whose privilege is withdrawn may
// have renewed it since it was listed. A keyCompromise also revokes every unexpired
// certificate of the same key (a renewal may keep its key), and theirs, transitively.
// Each certificate's lock is taken before its successors are looked for (see lockCert).
//
// A keyCompromise of a certificate already revoked for another reason changes that reason
// to keyCompromise (RFC 5280 allows it; the CRL and OCSP then say keyCompromise) and still
// revokes the rest. A revocation that finds nothing to do fails with ErrAlreadyRevoked.
func (s *store) revoke(ctx context.Context, rci *stepdb.RevokedCertificateInfo, successors bool) (revokeOutcome, error) {
	var out revokeOutcome
	keyCompromise := rci.ReasonCode == reasonKeyCompromise
	line := successors || keyCompromise
	err := s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		out = revokeOutcome{}
		if line {
			if err := lockCert(tx, rci.Serial); err != nil {
				return err
			}
		}
		prev, err := revocationTx(tx, rci.Serial)
		if err != nil {
			return err
		}
		changed, err := revokeOne(tx, rci.Serial, rci, rci.ExpiresAt.Unix())
		if err != nil {
			return err
		}
		if changed && prev != nil {
			out.ChangedFrom = prev.Reason
		}
		if line {
			if out.Also, err = revokeLine(tx, rci, keyCompromise, s.now()); err != nil {
				return err
			}
		}
		if prev != nil && !changed && len(out.Also) == 0 {
			return fmt.Errorf("%w: %s (%s at %s)", ErrAlreadyRevoked, wire.FormatDecimalSerial(rci.Serial), prev.Reason, prev.RevokedAt.Format(time.RFC3339))
		}
		return nil
	})
	return out, err
}

// revokeOne records the revocation of serial with rci's reason and time, or, for a
// keyCompromise of a certificate revoked for another reason, changes its reason (keeping
// the time it was revoked), and announces it. It reports whether it changed anything.
func revokeOne(tx *sitedb.Tx, serial string, rci *stepdb.RevokedCertificateInfo, expiresAt int64) (bool, error) {
	conflict := `DO NOTHING`
	if rci.ReasonCode == reasonKeyCompromise {
		conflict = `DO UPDATE SET reason_code = excluded.reason_code, reason = excluded.reason
			WHERE revoked_certificates.reason_code <> excluded.reason_code`
	}
	res, err := tx.Exec(`INSERT INTO revoked_certificates (serial, reason_code, reason, revoked_at, expires_at)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) `+conflict,
		serial, rci.ReasonCode, rci.Reason, rci.RevokedAt.Unix(), expiresAt)
	if err != nil {
		return false, fmt.Errorf("revoking %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("revoking %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	if n == 0 {
		return false, nil
	}
	tx.Notify(trust.RevokedChannel, serial)
	return true, nil
}

// GetRevokedCertificates lists every revocation (for the CRL).
func (s *store) GetRevokedCertificates() (*[]stepdb.RevokedCertificateInfo, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	rows, err := s.db.Query(ctx, `SELECT serial, reason_code, reason, revoked_at, expires_at
		FROM revoked_certificates ORDER BY revoked_at, serial`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []stepdb.RevokedCertificateInfo{}
	for rows.Next() {
		var r stepdb.RevokedCertificateInfo
		var at, exp int64
		if err := rows.Scan(&r.Serial, &r.ReasonCode, &r.Reason, &at, &exp); err != nil {
			return nil, err
		}
		r.RevokedAt, r.ExpiresAt = time.Unix(at, 0).UTC(), time.Unix(exp, 0).UTC()
		out = append(out, r)
	}
	return &out, rows.Err()
}

// revocation returns the revocation of a decimal serial, or nil.
func (s *store) revocation(ctx context.Context, serial string) (*stepdb.RevokedCertificateInfo, error) {
	return scanRevocation(s.db.QueryRow(ctx, selectRevocation, serial), serial)
}

// revocationTx is revocation inside a transaction.
func revocationTx(tx *sitedb.Tx, serial string) (*stepdb.RevokedCertificateInfo, error) {
	return scanRevocation(tx.QueryRow(selectRevocation, serial), serial)
}

const selectRevocation = `SELECT serial, reason_code, reason, revoked_at, expires_at
	FROM revoked_certificates WHERE serial = ?`

func scanRevocation(row *sql.Row, serial string) (*stepdb.RevokedCertificateInfo, error) {
	var r stepdb.RevokedCertificateInfo
	var at, exp int64
	err := row.Scan(&r.Serial, &r.ReasonCode, &r.Reason, &at, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the revocation of %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	r.RevokedAt, r.ExpiresAt = time.Unix(at, 0).UTC(), time.Unix(exp, 0).UTC()
	return &r, nil
}

// GetCRL returns the stored CRL of the issuing CA (smallstep expects a not-found error
// from nosql when there is none yet).
func (s *store) GetCRL() (*stepdb.CertificateRevocationListInfo, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	var info stepdb.CertificateRevocationListInfo
	var next, dur int64
	err := s.db.QueryRow(ctx, `SELECT number, next_update, duration_s, der FROM crls WHERE issuer_id = ?`, s.issuerID).
		Scan(&info.Number, &next, &dur, &info.DER)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("crl of %s: %w", s.issuerID, sql.ErrNoRows)
	}
	if err != nil {
		return nil, err
	}
	info.ExpiresAt, info.Duration = time.Unix(next, 0).UTC(), time.Duration(dur)*time.Second
	return &info, nil
}

// StoreCRL replaces the issuing CA's CRL.
func (s *store) StoreCRL(info *stepdb.CertificateRevocationListInfo) error {
	ctx, cancel := s.ctx()
	defer cancel()
	crl, err := x509.ParseRevocationList(info.DER)
	if err != nil {
		return fmt.Errorf("parsing new CRL: %w", err)
	}
	_, err = s.db.Exec(ctx, `INSERT INTO crls (issuer_id, number, this_update, next_update, duration_s, der)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (issuer_id) DO UPDATE SET number = excluded.number, this_update = excluded.this_update,
			next_update = excluded.next_update, duration_s = excluded.duration_s, der = excluded.der`,
		s.issuerID, info.Number, crl.ThisUpdate.Unix(), info.ExpiresAt.Unix(), int64(info.Duration/time.Second), info.DER)
	return err
}

// The SSH and one-time-token parts of smallstep's interface are not used by ibcm.

func (s *store) IsSSHRevoked(string) (bool, error)              { return false, nil }
func (s *store) RevokeSSH(*stepdb.RevokedCertificateInfo) error { return stepdb.ErrNotImplemented }
func (s *store) UseToken(string, string) (bool, error)          { return true, nil }
func (s *store) IsSSHHost(string) (bool, error)                 { return false, nil }
func (s *store) GetSSHHostPrincipals() ([]string, error)        { return nil, nil }
func (s *store) StoreSSHCertificate(*ssh.Certificate) error     { return stepdb.ErrNotImplemented }
func (s *store) Shutdown() error                                { return nil }

// reasonKeyCompromise is RFC 5280's keyCompromise reason code.
const reasonKeyCompromise = 1

// lockCert takes the row lock of an issued certificate until the transaction ends (on
// SQLite every write transaction holds the database's write lock anyway). Renewals and
// keyCompromise revocations of one certificate take this lock before they look at its
// successors or its revocation, so they take turns: a renewal either commits before the
// revocation looks for successors (and is revoked with them) or sees the revocation.
func lockCert(tx *sitedb.Tx, serial string) error {
	res, err := tx.Exec(`UPDATE certificates SET renewed_from = renewed_from WHERE serial = ?`, serial)
	if err != nil {
		return fmt.Errorf("locking certificate %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return refusal{fmt.Errorf("%w: certificate %s is not in the CA's records", ErrNotFound, wire.FormatDecimalSerial(serial))}
	}
	return nil
}

// refusal carries an outcome of the store through smallstep's error wrapping, with its
// message (see unwrapStep).
type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }
func (r refusal) Unwrap() error { return r.err }

// errRenewed means another renewal of the same certificate committed first.
var errRenewed = errors.New("certificate already renewed")

// storeRenewal records c as the successor of the certificate with serial old. Under old's
// lock it checks that old is not revoked, that its device is not blocked and that it has no
// successor yet, so of two racing renewals exactly one is recorded; the other gets
// errRenewed (and its certificate, never recorded, is never handed out).
func (s *store) storeRenewal(tx *sitedb.Tx, old string, c *x509.Certificate) error {
	if err := lockCert(tx, old); err != nil {
		return err
	}
	var revoked, renewed int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM revoked_certificates WHERE serial = ?`, old).Scan(&revoked); err != nil {
		return fmt.Errorf("checking the revocation of %s: %w", old, err)
	}
	if revoked > 0 {
		return refusal{fmt.Errorf("%w: certificate %s was revoked while it was being renewed", ErrRevoked, old)}
	}
	if err := s.checkDevice(tx.QueryRow, deviceIDOf(c), true); err != nil {
		return err
	}
	if err := tx.QueryRow(`SELECT COUNT(*) FROM certificates WHERE renewed_from = ?`, old).Scan(&renewed); err != nil {
		return fmt.Errorf("looking for the successor of %s: %w", old, err)
	}
	if renewed > 0 {
		return refusal{errRenewed}
	}
	return insertCert(tx, c, s.issuerID, "renew:"+old, old, s.now())
}

// successors returns the certificates renewed from serial, oldest first. There is at most
// one, except for forks recorded before renewal was idempotent.
func (s *store) successors(ctx context.Context, serial string) ([]*x509.Certificate, error) {
	rows, err := s.db.Query(ctx, `SELECT der FROM certificates WHERE renewed_from = ? ORDER BY created_at, serial`, serial)
	if err != nil {
		return nil, fmt.Errorf("looking for the successor of %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	defer rows.Close()
	var out []*x509.Certificate
	for rows.Next() {
		var der []byte
		if err := rows.Scan(&der); err != nil {
			return nil, fmt.Errorf("looking for the successor of %s: %w", wire.FormatDecimalSerial(serial), err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing the successor of %s: %w", wire.FormatDecimalSerial(serial), err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// revokeLine revokes, with rci's reason and time, every unexpired certificate renewed from
// rci.Serial and, when sameKey, every unexpired certificate of the same public key,
// transitively over both, taking each one's lock before looking for its own successors.
// It returns the serials it revoked or changed, and traverses expired certificates too
// (one may have been renewed before it expired).
func revokeLine(tx *sitedb.Tx, rci *stepdb.RevokedCertificateInfo, sameKey bool, now time.Time) ([]string, error) {
	if sameKey {
		if err := fillKeyHashes(tx); err != nil {
			return nil, err
		}
	}
	type node struct {
		serial, key string
		notAfter    int64
	}
	scan := func(query string, arg string) ([]node, error) {
		rows, err := tx.Query(query, arg)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []node
		for rows.Next() {
			var n node
			var key sql.NullString
			if err := rows.Scan(&n.serial, &key, &n.notAfter); err != nil {
				return nil, err
			}
			n.key = key.String
			out = append(out, n)
		}
		return out, rows.Err()
	}
	var changed []string
	seen := map[string]bool{rci.Serial: true}
	seenKey := map[string]bool{}
	var rootKey sql.NullString
	if err := tx.QueryRow(`SELECT spki_sha256 FROM certificates WHERE serial = ?`, rci.Serial).Scan(&rootKey); err != nil {
		return nil, fmt.Errorf("reading the key of %s: %w", wire.FormatDecimalSerial(rci.Serial), err)
	}
	queue := []node{{serial: rci.Serial, key: rootKey.String}}
	for ; len(queue) > 0; queue = queue[1:] {
		cur := queue[0]
		next, err := scan(`SELECT serial, spki_sha256, not_after FROM certificates WHERE renewed_from = ?`, cur.serial)
		if err != nil {
			return nil, fmt.Errorf("looking for the successors of %s: %w", wire.FormatDecimalSerial(cur.serial), err)
		}
		if sameKey && cur.key != "" && !seenKey[cur.key] {
			seenKey[cur.key] = true
			same, err := scan(`SELECT serial, spki_sha256, not_after FROM certificates WHERE spki_sha256 = ?`, cur.key)
			if err != nil {
				return nil, fmt.Errorf("looking for the certificates of the key of %s: %w", wire.FormatDecimalSerial(cur.serial), err)
			}
			next = append(next, same...)
		}
		for _, n := range next {
			if seen[n.serial] {
				continue
			}
			seen[n.serial] = true
			if err := lockCert(tx, n.serial); err != nil {
				return nil, err
			}
			if n.notAfter > now.Unix() {
				ok, err := revokeOne(tx, n.serial, rci, n.notAfter)
				if err != nil {
					return nil, err
				}
				if ok {
					changed = append(changed, n.serial)
				}
			}
			queue = append(queue, n)
		}
	}
	return changed, nil
}

// recordConflict records a refused renewal of old for the public key refused (see the
// renewal_conflicts table).
func (s *store) recordConflict(ctx context.Context, old, successor *x509.Certificate, refused string) error {
	now := s.now().Unix()
	_, err := s.db.Exec(ctx, `INSERT INTO renewal_conflicts
		(old_serial, device_id, subject, successor_serial, refused_key, attempts, first_at, last_at)
		VALUES (?, ?, ?, ?, ?, 1, ?, ?)
		ON CONFLICT (old_serial) DO UPDATE SET attempts = renewal_conflicts.attempts + 1,
			refused_key = excluded.refused_key, last_at = excluded.last_at`,
		old.SerialNumber.String(), deviceIDOf(old), old.Subject.CommonName, successor.SerialNumber.String(), refused, now, now)
	if err != nil {
		return fmt.Errorf("recording the refused renewal of %s: %w", wire.FormatSerial(old.SerialNumber), err)
	}
	return nil
}

// checkDevice fails with ErrDeviceBlocked when device (a device id, or "" for a certificate
// that names none) is blocked. This is the CA's one read of the MP's devices table, which
// the MP's Block sets and lists the device's certificates in one transaction. With lock,
// inside a renewal's transaction on PostgreSQL, it takes the device row's share lock, so a renewal
// and a block take turns: either the renewal commits first and the block's listing (after
// its UPDATE of the row) includes the new certificate, or the renewal waits for the block
// and sees it. Before the MP's tables exist no device is blocked.
func (s *store) checkDevice(queryRow func(query string, args ...any) *sql.Row, device string, lock bool) error {
	if device == "" {
		return nil
	}
	if ok, err := s.devicesTable(queryRow); err != nil || !ok {
		return err
	}
	q := `SELECT blocked_at FROM devices WHERE id = ?`
	if lock && s.db.Driver() == sitedb.Postgres {
		q += ` FOR SHARE`
	}
	var at sql.NullInt64
	err := queryRow(q, device).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading whether device %s is blocked: %w", device, err)
	}
	if at.Valid {
		return refusal{fmt.Errorf("%w: device %s was blocked at %s; an admin unblocks it and it enrolls again",
			ErrDeviceBlocked, device, time.Unix(at.Int64, 0).UTC().Format(time.RFC3339))}
	}
	return nil
}

// checkNoLiveCertificate refuses a re-enroll token for a device that still has a valid
// certificate: one it presented to an MP, or a renewal of one, neither revoked nor
// expired. A device that lost its state directory is blocked first (which revokes its
// certificates); the unblock then prints its re-enroll token.
func (s *store) checkNoLiveCertificate(queryRow func(query string, args ...any) *sql.Row, device string, now time.Time) error {
	var serial string
	err := queryRow(`SELECT c.serial FROM certificates c
		WHERE (c.serial IN (SELECT serial FROM device_certificates WHERE device_id = ?)
			OR c.renewed_from IN (SELECT serial FROM device_certificates WHERE device_id = ?))
		AND c.not_after > ? AND NOT EXISTS (SELECT 1 FROM revoked_certificates r WHERE r.serial = c.serial)
		LIMIT 1`, device, device, now.Unix()).Scan(&serial)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking for the device's valid certificates: %w", err)
	}
	return fmt.Errorf("%w: device %s still has the valid certificate %s; block it first (`ibcm device block`), and `ibcm device unblock` prints its re-enroll token",
		ErrDeviceLive, device, wire.FormatDecimalSerial(serial))
}

// devicesTable reports whether the MP's devices table exists yet.
func (s *store) devicesTable(queryRow func(query string, args ...any) *sql.Row) (bool, error) {
	if s.devicesExist.Load() {
		return true, nil
	}
	q := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'devices'`
	if s.db.Driver() == sitedb.Postgres {
		q = `SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = 'devices' AND schemaname = ANY (current_schemas(false))`
	}
	var n int
	if err := queryRow(q).Scan(&n); err != nil {
		return false, fmt.Errorf("looking for the devices table: %w", err)
	}
	if n == 0 {
		return false, nil
	}
	s.devicesExist.Store(true)
	return true, nil
}

// blockedAmong returns which of the devices are blocked, in one query for a group of new
// certificates. On PostgreSQL it takes the share lock of the rows it finds, as
// checkDevice does for a renewal: a block (which updates the row first, then lists the
// certificates of the device's re-enroll tokens) and the commit of a re-enrolled
// certificate take turns. A new device id has no row yet and costs nothing more.
func (s *store) blockedAmong(tx *sitedb.Tx, devices []string) (map[string]int64, error) {
	if len(devices) == 0 {
		return nil, nil
	}
	if ok, err := s.devicesTable(tx.QueryRow); err != nil || !ok {
		return nil, err
	}
	q := `SELECT id, blocked_at FROM devices WHERE id IN (?` + strings.Repeat(", ?", len(devices)-1) + `)`
	if s.db.Driver() == sitedb.Postgres {
		q += ` FOR SHARE`
	}
	args := make([]any, len(devices))
	for i, d := range devices {
		args[i] = d
	}
	rows, err := tx.Query(q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading whether the enrolled devices are blocked: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var at sql.NullInt64
		if err := rows.Scan(&id, &at); err != nil {
			return nil, err
		}
		if at.Valid {
			out[id] = at.Int64
		}
	}
	return out, rows.Err()
}

// deviceName returns the registered name of device id, for a re-enroll token: ErrNotFound
// when no MP has registered it, ErrDeviceBlocked while it is blocked.
func (s *store) deviceName(ctx context.Context, id string) (string, error) {
	queryRow := func(query string, args ...any) *sql.Row { return s.db.QueryRow(ctx, query, args...) }
	if err := s.checkDevice(queryRow, id, false); err != nil {
		return "", err
	}
	if !s.devicesExist.Load() {
		return "", fmt.Errorf("%w: no device %q (no MP has registered a device yet)", ErrNotFound, id)
	}
	var name string
	err := queryRow(`SELECT name FROM devices WHERE id = ?`, id).Scan(&name)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: no device %q", ErrNotFound, id)
	}
	if err != nil {
		return "", fmt.Errorf("reading device %s: %w", id, err)
	}
	return name, nil
}

// presented reports whether a device presented certificate serial at an MP (the MP's
// device_certificates); false before the MP's tables exist (checkDevice finds them).
func (s *store) presented(ctx context.Context, serial string) (bool, error) {
	if !s.devicesExist.Load() {
		return false, nil
	}
	var n int
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM device_certificates WHERE serial = ?`, serial).Scan(&n); err != nil {
		return false, fmt.Errorf("reading whether certificate %s reached an MP: %w", wire.FormatDecimalSerial(serial), err)
	}
	return n > 0, nil
}

func deviceIDOf(c *x509.Certificate) string {
	if id := trust.Identify(c); id.Kind == trust.KindDevice {
		return id.ID
	}
	return ""
}
