package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Renew issues the successor of old, a certificate the caller proved to hold in a TLS
// handshake, for the key of the CSR (a new key, or the current one for a renewal that keeps
// it; the CSR's names are ignored: the successor names what old names). A revoked or
// expired certificate, or one of a blocked device, is refused. The successor gets the
// profile's current validity, clamped to the issuing CA's lifetime.
//
// Renewal is idempotent by key. A certificate has at most one successor: asked again with
// the same public key, Renew returns the same certificate (a lost answer is harmless);
// asked with another key it refuses with ErrRenewalSuperseded and records the conflict,
// which the MP shows as a clone warning of the device. Of two racing renewals of one
// certificate exactly one is recorded (see storeRenewal). A successor that has since been
// revoked or has expired is not handed out again: the device enrolls anew.
func (c *CA) Renew(ctx context.Context, old *x509.Certificate, csrData []byte) ([]*x509.Certificate, error) {
	if c.now().After(old.NotAfter) {
		return nil, fmt.Errorf("%w at %s: enroll again with a token", ErrExpired, old.NotAfter.UTC().Format(time.RFC3339))
	}
	if rev, err := c.store.revocation(ctx, old.SerialNumber.String()); err != nil {
		return nil, err
	} else if rev != nil {
		return nil, fmt.Errorf("%w (%s) at %s: enroll again with a token", ErrRevoked, rev.Reason, rev.RevokedAt.Format(time.RFC3339))
	}
	// Checked again under the certificate's lock when the successor is recorded.
	if err := c.store.checkDevice(func(q string, args ...any) *sql.Row { return c.db.QueryRow(ctx, q, args...) }, deviceIDOf(old), false); err != nil {
		return nil, unwrapStep(err)
	}
	p := ProfileOf(old)
	if p == "" || p == OCSP {
		return nil, fmt.Errorf("%w: %q certificates are not renewed over mutual TLS", ErrBadProfile, p)
	}
	if p == Admin {
		// A disable revokes the user's certificates, but one can escape it (a login racing
		// the disable); it is not renewed while the user is disabled.
		if u, err := c.access.User(ctx, old.Subject.CommonName); errors.Is(err, access.ErrUnknownUser) || err == nil && u.DisabledAt != nil {
			return nil, fmt.Errorf("%w: %q is not an enabled user of the site", ErrUserDisabled, old.Subject.CommonName)
		} else if err != nil {
			return nil, err
		}
	}
	if len(csrData) == 0 {
		return nil, fmt.Errorf("%w: a renewal carries a CSR for the new key (signed with the current key to keep it)", ErrBadCSR)
	}
	csr, err := CheckCSR(csrData, p)
	if err != nil {
		return nil, err
	}
	t := Template{Profile: p, CommonName: old.Subject.CommonName, DNS: old.DNSNames, IPs: old.IPAddresses, URIs: old.URIs}
	for range 2 {
		if chain, err := c.successor(ctx, old, csr.PublicKey); chain != nil || err != nil {
			return chain, err
		}
		chain, err := c.sign(ctx, csr, t, "renew:"+old.SerialNumber.String())
		if !errors.Is(err, errRenewed) {
			return chain, err
		}
		// A racing renewal of old was recorded first: answer as to a retry.
	}
	return nil, fmt.Errorf("renewing %s: %w, but its successor cannot be read", wire.FormatSerial(old.SerialNumber), errRenewed)
}

// successor returns the chain of old's successor when it certifies pub, nil when old has
// no successor, and ErrRenewalSuperseded (recording the conflict) when its successor
// certifies another key.
func (c *CA) successor(ctx context.Context, old *x509.Certificate, pub crypto.PublicKey) ([]*x509.Certificate, error) {
	succs, err := c.store.successors(ctx, old.SerialNumber.String())
	if err != nil || len(succs) == 0 {
		return nil, err
	}
	for _, s := range succs {
		if !samePublicKey(s.PublicKey, pub) {
			continue
		}
		if rev, err := c.store.revocation(ctx, s.SerialNumber.String()); err != nil {
			return nil, err
		} else if rev != nil {
			return nil, fmt.Errorf("%w: %s was renewed as %s, which was revoked (%s) at %s: enroll again with a token",
				ErrRevoked, wire.FormatSerial(old.SerialNumber), wire.FormatSerial(s.SerialNumber), rev.Reason, rev.RevokedAt.Format(time.RFC3339))
		}
		if c.now().After(s.NotAfter) {
			return nil, fmt.Errorf("%w: %s was renewed as %s, which expired at %s: enroll again with a token",
				ErrExpired, wire.FormatSerial(old.SerialNumber), wire.FormatSerial(s.SerialNumber), s.NotAfter.UTC().Format(time.RFC3339))
		}
		// The device asks again only for an answer it never got. Once an MP has seen the
		// successor, the device has it and renews that one next: asking again for old's
		// successor, even with the same key (a renewal that kept its key), is a copy.
		if seen, err := c.store.presented(ctx, s.SerialNumber.String()); err != nil {
			return nil, err
		} else if seen {
			if err := c.store.recordConflict(ctx, old, s, publicKeyHash(pub)); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %s was already renewed as %s, which the device has used since; a copy of this certificate and its key exists (probable clone)",
				ErrRenewalSuperseded, wire.FormatSerial(old.SerialNumber), wire.FormatSerial(s.SerialNumber))
		}
		return []*x509.Certificate{s, c.h.Issuing}, nil
	}
	if err := c.store.recordConflict(ctx, old, succs[0], publicKeyHash(pub)); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: %s was already renewed as %s; a copy of this certificate and its key exists (probable clone)",
		ErrRenewalSuperseded, wire.FormatSerial(old.SerialNumber), wire.FormatSerial(succs[0].SerialNumber))
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func publicKeyHash(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	return keyHash(der)
}
