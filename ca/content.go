package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// contentSignerRenew: a content signer that expires within this is replaced by a new one
// (when the CA starts, and before it signs).
const contentSignerRenew = 30 * 24 * time.Hour

// errContentSignerProfile refuses the content-signer profile to the PKI routes and to
// Issue: only the CA makes those certificates, for a key only it holds.
var errContentSignerProfile = fmt.Errorf("%w: content-signer certificates are made only by the CA itself, for a key it keeps (POST /v1/admin/content/sign signs manifests)", ErrBadProfile)

// contentState is the content signer in use.
type contentState struct {
	mu    sync.Mutex
	key   crypto.Signer
	chain []*x509.Certificate // leaf, issuing CA
}

// derivedPassword is the key password when the CA was given none: an HMAC of the issuing
// key's PKCS#8 encoding, so the stored key is as safe as the issuing key itself.
func derivedPassword(issuingKey crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(issuingKey)
	if err != nil {
		return nil, fmt.Errorf("ca: deriving the key password: %w", err)
	}
	mac := hmac.New(sha256.New, []byte("ibcm content-signer key password"))
	mac.Write(der)
	return []byte(hex.EncodeToString(mac.Sum(nil))), nil
}

// contentSigner returns the key and chain that sign manifests: the newest content signer
// in the site database that stays valid beyond contentSignerRenew and whose key opens with
// the CA's password, else a new one (a key made here, a certificate of the content-signer
// profile, both stored; the key encrypted).
func (c *CA) contentSigner(ctx context.Context) (crypto.Signer, []*x509.Certificate, error) {
	s := &c.content
	s.mu.Lock()
	defer s.mu.Unlock()
	now := c.now()
	// Renew at contentSignerRenew before the end, unless the issuing CA ends sooner (a new
	// certificate would end with it as well).
	renewAt := now.Add(contentSignerRenew)
	if end := c.h.Issuing.NotAfter.Add(-time.Second); renewAt.After(end) {
		renewAt = end
	}
	if s.key != nil && s.chain[0].NotAfter.After(renewAt) && now.Before(s.chain[0].NotAfter) {
		return s.key, s.chain, nil
	}
	key, leaf, err := c.storedContentSigner(ctx, renewAt)
	if err != nil {
		return nil, nil, err
	}
	if key == nil {
		if key, leaf, err = c.newContentSigner(ctx); err != nil {
			return nil, nil, err
		}
	}
	s.key, s.chain = key, []*x509.Certificate{leaf, c.h.Issuing}
	return s.key, s.chain, nil
}

// storedContentSigner reads the newest usable content signer valid after renewAt, or none.
func (c *CA) storedContentSigner(ctx context.Context, renewAt time.Time) (crypto.Signer, *x509.Certificate, error) {
	rows, err := c.db.Query(ctx, `SELECT der, key_pem FROM content_signers WHERE not_after > ? ORDER BY not_after DESC`,
		renewAt.Unix())
	if err != nil {
		return nil, nil, fmt.Errorf("reading the content signers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var der, keyPEM []byte
		if err := rows.Scan(&der, &keyPEM); err != nil {
			return nil, nil, fmt.Errorf("reading the content signers: %w", err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			continue
		}
		if rev, err := c.store.IsRevoked(cert.SerialNumber.String()); err != nil || rev {
			continue
		}
		key, err := DecryptKey(keyPEM, c.keyPassword)
		if err != nil {
			// Another password (the CA's changed): make a new signer; the old certificate
			// still verifies what it signed.
			c.log.Warn().Str("serial", wire.FormatSerial(cert.SerialNumber)).Msg("a stored content signer's key does not open with the CA's password; making a new one")
			continue
		}
		return key, cert, nil
	}
	return nil, nil, rows.Err()
}

// newContentSigner makes a key, has the issuing CA certify it with the content-signer
// profile and stores both.
func (c *CA) newContentSigner(ctx context.Context) (crypto.Signer, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), c.rand)
	if err != nil {
		return nil, nil, fmt.Errorf("making the content signer's key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(c.rand, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("making the content signer's request: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, err
	}
	t := Template{Profile: ContentSigner, CommonName: "content-signer",
		URIs: []*url.URL{{Scheme: "urn", Opaque: "ibcm:site:" + c.siteCode + ":role:" + manifest.ContentRole}}}
	chain, err := c.sign(ctx, csr, t, "ca")
	if err != nil {
		return nil, nil, fmt.Errorf("issuing the content signer's certificate: %w", err)
	}
	keyPEM, err := EncryptKey(key, c.keyPassword)
	if err != nil {
		return nil, nil, err
	}
	leaf := chain[0]
	err = c.db.Tx(ctx, func(tx *sitedb.Tx) error {
		_, err := tx.Exec(`INSERT INTO content_signers (serial, der, key_pem, not_after, created_at) VALUES (?, ?, ?, ?, ?)`,
			leaf.SerialNumber.String(), leaf.Raw, keyPEM, leaf.NotAfter.Unix(), c.now().Unix())
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("storing the content signer: %w", err)
	}
	c.log.Info().Str("serial", wire.FormatSerial(leaf.SerialNumber)).Time("not_after", leaf.NotAfter).Msg("content signer made")
	return key, leaf, nil
}

// SignManifest signs a manifest with the site's content signer (made first if needed).
func (c *CA) SignManifest(ctx context.Context, m *wire.Manifest) (*wire.SignedManifest, error) {
	if err := manifest.Check(m); err != nil {
		return nil, err
	}
	key, chain, err := c.contentSigner(ctx)
	if err != nil {
		return nil, err
	}
	return manifest.Sign(m, key, chain)
}

// handleContentSign is POST /v1/admin/content/sign: a wire.Manifest in JSON (strict, at
// most manifest.MaxSigned bytes) → the wire.SignedManifest.
func (c *CA) handleContentSign(w http.ResponseWriter, r *http.Request, by string) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, manifest.MaxSigned))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "a manifest is at most %d bytes", manifest.MaxSigned)
		}
		return api.BadRequest("reading the manifest: %v", err)
	}
	// Decode parses strictly and checks every field (paths included).
	m, err := manifest.Decode(b)
	if err != nil {
		return api.Wrap(err, http.StatusBadRequest, "invalid_manifest", err.Error())
	}
	sm, err := c.SignManifest(r.Context(), m)
	if err != nil {
		return err
	}
	c.log.Info().Str("package", m.Name).Str("version", m.Version).Str("manifest_sha256", manifest.Hash(sm.Manifest)).
		Str("admin", by).Msg("manifest signed")
	api.WriteJSON(w, http.StatusOK, sm)
	return nil
}
