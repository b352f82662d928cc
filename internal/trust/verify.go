package trust

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Outcomes of Verify that callers act on.
var (
	ErrNoCertificate = errors.New("no client certificate presented")
	ErrUntrusted     = errors.New("certificate does not chain to the site's roots")
	ErrExpired       = errors.New("certificate expired or not yet valid")
	ErrRevoked       = errors.New("certificate revoked")
	ErrWrongUsage    = errors.New("certificate not valid for this use (extended key usage)")
)

// Anchors are the site's CA certificates: the roots trusted and the issuing CAs allowed as
// intermediates.
type Anchors struct {
	Roots    []*x509.Certificate
	Issuing  []*x509.Certificate
	rootPool *x509.CertPool
	intPool  *x509.CertPool
}

// NewAnchors builds Anchors from roots and issuing CA certificates.
func NewAnchors(roots, issuing []*x509.Certificate) *Anchors {
	a := &Anchors{Roots: roots, Issuing: issuing, rootPool: x509.NewCertPool(), intPool: x509.NewCertPool()}
	for _, c := range roots {
		a.rootPool.AddCert(c)
	}
	for _, c := range issuing {
		a.intPool.AddCert(c)
	}
	return a
}

// RootPool returns the roots as a pool (for tls.Config.ClientCAs and RootCAs).
func (a *Anchors) RootPool() *x509.CertPool { return a.rootPool }

// LoadAnchors reads the site's CA certificates from the site database.
func LoadAnchors(ctx context.Context, db *sitedb.DB) (*Anchors, error) {
	rows, err := db.Query(ctx, `SELECT kind, der FROM ca_certificates ORDER BY created_at`)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificates: %w", err)
	}
	defer rows.Close()
	var roots, issuing []*x509.Certificate
	for rows.Next() {
		var kind string
		var der []byte
		if err := rows.Scan(&kind, &der); err != nil {
			return nil, fmt.Errorf("reading CA certificates: %w", err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parsing stored %s CA certificate: %w", kind, err)
		}
		if kind == "root" {
			roots = append(roots, c)
		} else {
			issuing = append(issuing, c)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(roots) == 0 {
		return nil, errors.New("the site database holds no root CA certificate: run `ibcm site init` first")
	}
	return NewAnchors(roots, issuing), nil
}

// Verifier checks a peer's certificate chain against the site's anchors, the clock and the
// revoked set.
type Verifier struct {
	Anchors *Anchors
	Revoked *RevokedSet
	Now     func() time.Time // defaults to time.Now
}

// Verify checks that chain[0] chains to a site root (chain[1:] and the site's issuing CAs as
// intermediates), is valid now, carries usage (for example x509.ExtKeyUsageClientAuth), and
// is not revoked. It returns the leaf, or an error wrapping one of the Err values.
func (v *Verifier) Verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, ErrNoCertificate
	}
	leaf := chain[0]
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	inter := v.Anchors.intPool
	if len(chain) > 1 {
		inter = inter.Clone()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         v.Anchors.rootPool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) {
			switch inv.Reason {
			case x509.Expired:
				return nil, fmt.Errorf("%w: valid %s to %s", ErrExpired,
					leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
			case x509.IncompatibleUsage:
				return nil, ErrWrongUsage
			}
		}
		return nil, fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	if v.Revoked != nil && v.Revoked.Contains(leaf.SerialNumber) {
		return nil, fmt.Errorf("%w: serial %s", ErrRevoked, wire.FormatSerial(leaf.SerialNumber))
	}
	return leaf, nil
}
