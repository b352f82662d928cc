package e2e

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/atomicfile"
)

// MaxCRL bounds a CRL as fetched.
const MaxCRL = 8 << 20

// CRL is the issuing CA's certificate revocation list as a session's end holds it (the
// agent, and the helper before a direct connection): verified against the issuing CA's
// certificate before it is used or kept.
type CRL struct {
	mu      sync.Mutex
	issuer  *x509.Certificate
	list    *x509.RevocationList
	revoked map[string]bool // serials (decimal)
	path    string
}

// NewCRL holds the CRLs of issuer, kept at path (loaded from there when a valid one is).
func NewCRL(issuer *x509.Certificate, path string) *CRL {
	c := &CRL{issuer: issuer, path: path}
	if path != "" {
		if b, err := os.ReadFile(path); err == nil {
			_ = c.update(b, false)
		}
	}
	return c
}

// SetIssuer changes the CA the CRL must be signed by (a renewal under another CA).
func (c *CRL) SetIssuer(issuer *x509.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.issuer == nil || issuer == nil || !c.issuer.Equal(issuer) {
		c.issuer, c.list, c.revoked = issuer, nil, nil
	}
}

// Update verifies a fetched CRL (DER) and keeps it when it is newer than the one held.
func (c *CRL) Update(der []byte) error { return c.update(der, true) }

func (c *CRL) update(der []byte, save bool) error {
	if len(der) > MaxCRL {
		return errors.New("CRL too large")
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("CRL: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.issuer == nil {
		return errors.New("CRL: no issuing CA to verify it against")
	}
	if err := l.CheckSignatureFrom(c.issuer); err != nil {
		return fmt.Errorf("CRL: not signed by the issuing CA %q: %w", c.issuer.Subject.CommonName, err)
	}
	if c.list != nil && l.ThisUpdate.Before(c.list.ThisUpdate) {
		return fmt.Errorf("CRL: older (%s) than the one held (%s)", l.ThisUpdate.Format(time.RFC3339), c.list.ThisUpdate.Format(time.RFC3339))
	}
	m := make(map[string]bool, len(l.RevokedCertificateEntries))
	for _, e := range l.RevokedCertificateEntries {
		m[e.SerialNumber.String()] = true
	}
	c.list, c.revoked = l, m
	if save && c.path != "" {
		if err := atomicfile.Write(c.path, der, 0o600); err != nil {
			return fmt.Errorf("keeping the CRL: %w", err)
		}
	}
	return nil
}

// Revoked reports whether cert, issued by the CRL's CA, is on the list.
func (c *CRL) Revoked(cert *x509.Certificate) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.list == nil || c.issuer == nil || string(cert.RawIssuer) != string(c.issuer.RawSubject) {
		return false
	}
	return c.revoked[new(big.Int).Set(cert.SerialNumber).String()]
}

// NextUpdate is when the CRL held says a newer one is due (zero when none is held).
func (c *CRL) NextUpdate() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.list == nil {
		return time.Time{}
	}
	return c.list.NextUpdate
}
