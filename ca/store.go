package ca

import (
	"context"
	"crypto/x509"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"
	"golang.org/x/crypto/ssh"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrate creates or updates the CA's tables in the site database.
func Migrate(ctx context.Context, db *sitedb.DB) error {
	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		return err
	}
	return db.Migrate(ctx, "ca", ms)
}

// store holds all of the CA's SQL. It implements smallstep's database interfaces so the
// embedded authority reads and writes certificates, revocations and CRLs in our tables.
type store struct {
	db       *sitedb.DB
	issuerID string
	now      func() time.Time
	issued   issued // group commit of new certificates (issued.go)
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
		(serial, profile, subject, issuer_id, not_before, not_after, der, issued_by, renewed_from, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.SerialNumber.String(), string(ProfileOf(c)), c.Subject.CommonName, issuerID,
		c.NotBefore.Unix(), c.NotAfter.Unix(), c.Raw, issuedBy, from, now.Unix())
	if err != nil {
		return fmt.Errorf("recording certificate %s: %w", c.SerialNumber, err)
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
		return nil, fmt.Errorf("certificate %s: %w", serial, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", serial, err)
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

// Revoke records a revocation and announces it on trust.RevokedChannel in the same
// transaction, so every server's revoked set learns of it as soon as it is committed. A
// revocation for keyCompromise revokes, in the same transaction, every certificate renewed
// from this one, transitively: whoever holds the compromised key may have renewed it.
func (s *store) Revoke(rci *stepdb.RevokedCertificateInfo) error {
	ctx, cancel := s.ctx()
	defer cancel()
	err := s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if rci.ReasonCode == reasonKeyCompromise {
			if err := lockCert(tx, rci.Serial); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(`INSERT INTO revoked_certificates (serial, reason_code, reason, revoked_at, expires_at)
			VALUES (?, ?, ?, ?, ?)`,
			rci.Serial, rci.ReasonCode, rci.Reason, rci.RevokedAt.Unix(), rci.ExpiresAt.Unix()); err != nil {
			return err
		}
		tx.Notify(trust.RevokedChannel, rci.Serial)
		if rci.ReasonCode == reasonKeyCompromise {
			return revokeSuccessors(tx, rci)
		}
		return nil
	})
	if sitedb.IsUniqueViolation(err) {
		return stepdb.ErrAlreadyExists
	}
	return err
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
	var r stepdb.RevokedCertificateInfo
	var at, exp int64
	err := s.db.QueryRow(ctx, `SELECT serial, reason_code, reason, revoked_at, expires_at
		FROM revoked_certificates WHERE serial = ?`, serial).Scan(&r.Serial, &r.ReasonCode, &r.Reason, &at, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
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
		return fmt.Errorf("locking certificate %s: %w", serial, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return refusal{fmt.Errorf("%w: certificate %s is not in the CA's records", ErrNotFound, serial)}
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
// lock it checks that old is not revoked and has no successor yet, so of two racing
// renewals exactly one is recorded; the other gets errRenewed (and its certificate, never
// recorded, is never handed out).
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
		return nil, fmt.Errorf("looking for the successor of %s: %w", serial, err)
	}
	defer rows.Close()
	var out []*x509.Certificate
	for rows.Next() {
		var der []byte
		if err := rows.Scan(&der); err != nil {
			return nil, fmt.Errorf("looking for the successor of %s: %w", serial, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing the successor of %s: %w", serial, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// revokeSuccessors revokes, with rci's reason and time, every certificate renewed from
// rci.Serial, transitively, taking each one's lock before looking for its own successors.
func revokeSuccessors(tx *sitedb.Tx, rci *stepdb.RevokedCertificateInfo) error {
	seen := map[string]bool{rci.Serial: true}
	for queue := []string{rci.Serial}; len(queue) > 0; queue = queue[1:] {
		rows, err := tx.Query(`SELECT serial, not_after FROM certificates WHERE renewed_from = ?`, queue[0])
		if err != nil {
			return fmt.Errorf("looking for the successors of %s: %w", queue[0], err)
		}
		type succ struct {
			serial   string
			notAfter int64
		}
		var next []succ
		for rows.Next() {
			var n succ
			if err := rows.Scan(&n.serial, &n.notAfter); err != nil {
				rows.Close()
				return err
			}
			next = append(next, n)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, n := range next {
			if seen[n.serial] {
				continue
			}
			seen[n.serial] = true
			if err := lockCert(tx, n.serial); err != nil {
				return err
			}
			res, err := tx.Exec(`INSERT INTO revoked_certificates (serial, reason_code, reason, revoked_at, expires_at)
				VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING`,
				n.serial, rci.ReasonCode, rci.Reason, rci.RevokedAt.Unix(), n.notAfter)
			if err != nil {
				return fmt.Errorf("revoking %s, renewed from a compromised certificate: %w", n.serial, err)
			}
			if k, _ := res.RowsAffected(); k > 0 {
				tx.Notify(trust.RevokedChannel, n.serial)
			}
			queue = append(queue, n.serial)
		}
	}
	return nil
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
		return fmt.Errorf("recording the refused renewal of %s: %w", old.SerialNumber, err)
	}
	return nil
}

func deviceIDOf(c *x509.Certificate) string {
	if id := trust.Identify(c); id.Kind == trust.KindDevice {
		return id.ID
	}
	return ""
}
