package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha1" //nolint:gosec // RFC 6960 CertID hashes default to SHA-1
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"

	cfocsp "github.com/cloudflare/cfssl/ocsp"
	"golang.org/x/crypto/ocsp"
)

// CRL returns the issuing CA's current CRL (DER), making the first one if there is none.
func (c *CA) CRL(ctx context.Context) ([]byte, error) {
	info, err := c.store.GetCRL()
	if err == nil {
		return info.DER, nil
	}
	if err := c.RefreshCRL(); err != nil {
		return nil, err
	}
	info, err = c.store.GetCRL()
	if err != nil {
		return nil, fmt.Errorf("reading CRL: %w", err)
	}
	return info.DER, nil
}

// RefreshCRL signs and stores a new CRL with the next CRL number.
func (c *CA) RefreshCRL() error {
	if err := c.auth.GenerateCertificateRevocationList(); err != nil {
		return fmt.Errorf("generating CRL: %w", err)
	}
	return nil
}

// crlDue reports whether the stored CRL is missing or has less than a third of its life left.
func (c *CA) crlDue() bool {
	info, err := c.store.GetCRL()
	if err != nil {
		return true
	}
	return c.now().After(info.ExpiresAt.Add(-info.Duration / 3))
}

// ocspResponder signs OCSP responses with a short-lived certificate of the ocsp profile whose
// key exists only in this process.
type ocspResponder struct {
	signer   cfocsp.Signer
	cert     *x509.Certificate
	renewAt  time.Time
	keyHash1 []byte // SHA-1 of the issuing CA's public key, as CertIDs carry it
	keyHash2 []byte // SHA-256 of the same
}

// rotateResponder issues a new OCSP signing certificate when there is none or the current
// one has passed two thirds of its life.
func (c *CA) rotateResponder(ctx context.Context) error {
	c.mu.RLock()
	r := c.responder
	c.mu.RUnlock()
	if r != nil && c.now().Before(r.renewAt) {
		return nil
	}
	key, err := ocspKey(c.rand)
	if err != nil {
		return fmt.Errorf("making OCSP key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(c.rand, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("making OCSP request: %w", err)
	}
	chain, err := c.Issue(ctx, IssueSpec{Profile: OCSP, Subject: "ocsp-" + c.issuerID}, csrDER, "ca")
	if err != nil {
		return fmt.Errorf("issuing OCSP signing certificate: %w", err)
	}
	cert := chain[0]
	signer, err := cfocsp.NewSigner(c.h.Issuing, cert, key, time.Hour)
	if err != nil {
		return err
	}
	spki, err := subjectPublicKeyBits(c.h.Issuing)
	if err != nil {
		return err
	}
	h1 := sha1.Sum(spki) //nolint:gosec
	h2 := sha256.Sum256(spki)
	life := cert.NotAfter.Sub(cert.NotBefore)
	c.mu.Lock()
	c.responder = &ocspResponder{signer: signer, cert: cert, renewAt: cert.NotBefore.Add(life * 2 / 3), keyHash1: h1[:], keyHash2: h2[:]}
	c.mu.Unlock()
	c.log.Info().Str("serial", cert.SerialNumber.String()).Time("not_after", cert.NotAfter).Msg("OCSP signing certificate issued")
	return nil
}

// ErrOCSPUnauthorized means the request asks about a certificate this CA did not issue.
var ErrOCSPUnauthorized = errors.New("not a certificate of this CA")

// OCSP answers a parsed OCSP request: good or revoked (with reason and time) for a
// certificate of the issuing CA, ErrOCSPUnauthorized for anything else.
func (c *CA) OCSP(ctx context.Context, req *ocsp.Request) ([]byte, error) {
	if err := c.rotateResponder(ctx); err != nil {
		return nil, err
	}
	c.mu.RLock()
	r := c.responder
	c.mu.RUnlock()
	var want []byte
	switch req.HashAlgorithm {
	case crypto.SHA1:
		want = r.keyHash1
	case crypto.SHA256:
		want = r.keyHash2
	default:
		return nil, fmt.Errorf("%w: hash algorithm %v", ErrOCSPUnauthorized, req.HashAlgorithm)
	}
	if !bytes.Equal(req.IssuerKeyHash, want) {
		return nil, fmt.Errorf("%w: other issuer", ErrOCSPUnauthorized)
	}
	serial := req.SerialNumber.String()
	cert, err := c.store.certificate(ctx, serial)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: serial %s", ErrOCSPUnauthorized, serial)
	}
	if err != nil {
		return nil, err
	}
	rev, err := c.store.revocation(ctx, serial)
	if err != nil {
		return nil, err
	}
	now := c.now().UTC().Truncate(time.Minute)
	next := now.Add(time.Hour)
	sr := cfocsp.SignRequest{Certificate: cert, Status: "good", ThisUpdate: &now, NextUpdate: &next, IssuerHash: req.HashAlgorithm}
	if rev != nil {
		sr.Status, sr.Reason, sr.RevokedAt = "revoked", rev.ReasonCode, rev.RevokedAt
	}
	return r.signer.Sign(sr)
}

// subjectPublicKeyBits returns the BIT STRING contents of a certificate's public key, which
// is what an OCSP CertID hashes.
func subjectPublicKeyBits(c *x509.Certificate) ([]byte, error) {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("parsing issuing CA public key: %w", err)
	}
	return spki.PublicKey.Bytes, nil
}

// Prepare makes sure a current CRL and an OCSP signing certificate exist.
func (c *CA) Prepare(ctx context.Context) error {
	if c.crlDue() {
		if err := c.RefreshCRL(); err != nil {
			return err
		}
	}
	return c.rotateResponder(ctx)
}

// Run keeps the CA's published state fresh until ctx is done: a new CRL before the current
// one has less than a third of its life left, and a new OCSP signing certificate at two
// thirds of the current one's life. It checks every interval (a minute when zero).
func (c *CA) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Prepare(ctx); err != nil && ctx.Err() == nil {
				c.log.Error().Err(err).Msg("refreshing CRL or OCSP responder")
			}
		}
	}
}
