package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// GuestOptions are what `ibcm-client share --code` needs to exchange a helper's security
// code on a device that is not enrolled.
type GuestOptions struct {
	CAURL      string // https URL of the site's CA
	RootSHA256 string // the site root's SHA-256, as for enrollment
	// Code is the helper's one-time code. It is a secret: sent to the CA and nowhere else,
	// and never part of an error.
	Code    string
	User    string // the sharer's local user name: the certificate's CN
	Timeout time.Duration
	Now     func() time.Time
}

// Guest is what the exchange gives: a one-hour guest certificate for one session, whose
// key never leaves memory, and the site's pinned root.
type Guest struct {
	Certificate tls.Certificate
	Roots       *x509.CertPool
	Grant       wire.GuestCertificate // the session, its helper, its mode and the signed ticket
}

var guestNameRE = regexp.MustCompile(`[^A-Za-z0-9._@-]`)

// GuestName is the certificate name of a local user: the CA's name rules (letters, digits,
// '.', '_', '@', '-', at most 64) applied to it.
func GuestName(user string) string {
	n := guestNameRE.ReplaceAllString(user, "_")
	n = strings.TrimLeft(n, "._@-")
	if len(n) > 64 {
		n = n[:64]
	}
	if n == "" {
		n = "guest"
	}
	return n
}

// ExchangeCode trusts the CA only through the pinned root (as Enroll does), makes a P-256
// key in memory, and exchanges the code with a certificate request for a guest
// certificate, which it checks: the pinned root, the key made here, the guest EKU, a
// session named.
func ExchangeCode(ctx context.Context, o GuestOptions) (*Guest, error) {
	now := o.Now
	if now == nil {
		now = time.Now
	}
	base, err := parseCAURL(o.CAURL)
	if err != nil {
		return nil, fmt.Errorf("security code: %w", err)
	}
	pin, err := ParseFingerprint(o.RootSHA256)
	if err != nil {
		return nil, fmt.Errorf("security code: %w", err)
	}
	if strings.TrimSpace(o.Code) == "" {
		return nil, errors.New("security code: the helper's code is required")
	}
	hc := newHTTPClient(pinnedTLS(pin, base.Hostname(), now), o.Timeout)
	defer hc.CloseIdleConnections()
	var bundle wire.Bundle
	if err := call(ctx, hc, http.MethodGet, base, "/v1/bundle", nil, &bundle); err != nil {
		return nil, fmt.Errorf("security code: fetching the trust bundle: %w", err)
	}
	roots, err := parseCerts([]byte(bundle.Roots))
	if err != nil {
		return nil, fmt.Errorf("security code: the CA's trust bundle: %w", err)
	}
	pool := x509.NewCertPool()
	found := false
	for _, r := range roots {
		if sum := sha256.Sum256(r.Raw); string(sum[:]) == string(pin) {
			pool.AddCert(r)
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("security code: %w: the CA's trust bundle does not contain the pinned root %s", ErrPinMismatch, formatFingerprint(pin))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("security code: making a key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: GuestName(o.User)}}, key)
	if err != nil {
		return nil, fmt.Errorf("security code: making the certificate request: %w", err)
	}
	var grant wire.GuestCertificate
	req := wire.GuestExchangeRequest{Code: o.Code, CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}
	if err := call(ctx, hc, http.MethodPost, base, "/v1/guest/exchange", req, &grant); err != nil {
		return nil, fmt.Errorf("security code: %w", err)
	}
	chain, err := parseCerts([]byte(grant.Certificate))
	if err != nil {
		return nil, fmt.Errorf("security code: the CA's answer: %w", err)
	}
	leaf := chain[0]
	if !samePublicKey(leaf, key) {
		return nil, errors.New("security code: the CA's answer certifies another key than the one requested")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("security code: the guest certificate does not verify up to the site's root: %w", err)
	}
	if id := wire.Identify(leaf); !wire.IsGuestCertificate(leaf) || id.Kind != wire.KindGuest || id.ID != grant.Session || grant.TicketID == "" {
		return nil, errors.New("security code: the CA's answer is not a guest certificate of the session it names")
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return &Guest{Certificate: cert, Roots: pool, Grant: grant}, nil
}
