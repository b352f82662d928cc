package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// EnrollOptions say where the device enrolls and what it asks for.
type EnrollOptions struct {
	Dir   string // state directory; created with mode 0700
	CAURL string // https URL of the CA's enrollment API
	// Token is the one-time enrollment token. It is a secret: it is sent to the CA and
	// nowhere else, and never part of an error.
	Token string
	// RootSHA256 is the SHA-256 of the site's root certificate (hex, either case, colons
	// allowed). The CA's TLS chain must contain that root.
	RootSHA256 string
	// Name is the device name (CN). When empty, a token bound to a subject gives it, else
	// the short host name; a name given here that the token is not bound to is refused.
	Name    string
	FQDN    string  // the device's FQDN (one DNS SAN); none when empty
	KeyType KeyType // P256 when empty
	Force   bool    // replace an existing identity in Dir

	Timeout time.Duration    // per request; DefaultTimeout when zero
	Now     func() time.Time // time.Now when nil
	Rand    io.Reader        // crypto/rand when nil
}

// Enroll makes the device's key, has the CA certify it with a one-time token and stores
// the identity in opts.Dir.
//
// The CA is trusted only through the pin: its TLS chain must contain the root with
// SHA-256 opts.RootSHA256, and its certificate must verify up to that root for the URL's
// host. The trust bundle is fetched and checked to contain the pinned root before the
// token is spent, so a wrong bundle does not cost a token. The returned chain must verify
// up to the pinned root and certify the key made here. Files are written only after all
// of that succeeded, as one change (see commit): a failed enrollment leaves the directory
// as it was.
func Enroll(ctx context.Context, opts EnrollOptions) (*Identity, error) {
	now, rnd := opts.Now, opts.Rand
	if now == nil {
		now = time.Now
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	if opts.Dir == "" {
		return nil, errors.New("enroll: the state directory is required")
	}
	base, err := parseCAURL(opts.CAURL)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if strings.TrimSpace(opts.Token) == "" {
		return nil, errors.New("enroll: an enrollment token is required")
	}
	pin, err := ParseFingerprint(opts.RootSHA256)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	kt, err := ParseKeyType(string(opts.KeyType))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	name, fromToken := opts.Name, opts.Name == ""
	if fromToken {
		if name, err = shortHostname(); err != nil {
			return nil, fmt.Errorf("enroll: %w", err)
		}
	}
	fqdn := strings.TrimSuffix(strings.TrimSpace(opts.FQDN), ".")

	if err := recoverStaged(opts.Dir); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if !opts.Force {
		exists, err := hasIdentity(opts.Dir)
		if err != nil {
			return nil, fmt.Errorf("enroll: checking %s: %w", opts.Dir, err)
		}
		if exists {
			return nil, fmt.Errorf("enroll: %w: %s already holds an identity; renew it, or pass --force to replace it", ErrAlreadyEnrolled, opts.Dir)
		}
	}

	hc := newHTTPClient(pinnedTLS(pin, base.Hostname(), now), opts.Timeout)
	defer hc.CloseIdleConnections()

	// The trust bundle first: it must hold the pinned root.
	var bundle wire.Bundle
	if err := call(ctx, hc, http.MethodGet, base, "/v1/bundle", nil, &bundle); err != nil {
		return nil, fmt.Errorf("enroll: fetching the trust bundle: %w", err)
	}
	roots, err := parseCerts([]byte(bundle.Roots))
	if err != nil {
		return nil, fmt.Errorf("enroll: the CA's trust bundle: %w", err)
	}
	var pinned *x509.Certificate
	for _, r := range roots {
		if sum := sha256.Sum256(r.Raw); bytes.Equal(sum[:], pin) {
			pinned = r
		}
	}
	if pinned == nil {
		return nil, fmt.Errorf("enroll: %w: the CA's trust bundle does not contain the pinned root %s", ErrPinMismatch, formatFingerprint(pin))
	}

	key, err := kt.generate(rnd)
	if err != nil {
		return nil, fmt.Errorf("enroll: making a %s key: %w", kt, err)
	}
	csr, err := makeCSR(rnd, key, name, fqdn)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	var resp wire.CertificateResponse
	req := wire.EnrollRequest{Token: opts.Token, Profile: "client", CSR: string(csr), NameFromToken: fromToken}
	if err := call(ctx, hc, http.MethodPost, base, "/v1/enroll", req, &resp); err != nil {
		var se *ServerError
		if !fromToken && errors.As(err, &se) && se.Code == "subject_mismatch" {
			return nil, fmt.Errorf("enroll: the token is bound to another device name than %q; leave out the name to enroll with the token's: %w", name, err)
		}
		return nil, fmt.Errorf("enroll: %w", err)
	}
	chain, err := checkIssued(resp, key, []*x509.Certificate{pinned}, now())
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if fromToken {
		name = chain[0].Subject.CommonName // the token's subject, or the host name
	}
	if chain[0].Subject.CommonName != name {
		return nil, fmt.Errorf("enroll: the CA issued a certificate for %q, the request named %q", chain[0].Subject.CommonName, name)
	}

	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	st, err := encodeState(state{
		CAURL: base.String(), DeviceID: DeviceIDOf(chain[0]), Serial: chain[0].SerialNumber.String(),
		SerialHex: wire.FormatSerial(chain[0].SerialNumber), NotAfter: chain[0].NotAfter.UTC(), KeyType: kt,
		RootSHA256: formatFingerprint(pin), UpdatedAt: now().UTC(), Bootstrap: resp.Bootstrap,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := ensureDir(opts.Dir); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	err = commit(opts.Dir, map[string][]byte{
		KeyFile: keyPEM, CertFile: encodeCerts(chain...), RootsFile: encodeCerts(roots...), StateFile: st,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll: storing the identity in %s: %w", opts.Dir, err)
	}
	// A renewal key pending for the replaced identity is never sent now.
	_ = os.Remove(filepath.Join(opts.Dir, PendingKeyFile))
	id := newIdentity(opts.Dir, base.String(), key, chain, roots)
	id.Bootstrap = resp.Bootstrap
	return id, nil
}

// checkIssued parses the CA's answer and checks it: a client certificate for key that
// names a device id and verifies up to one of roots with the rest of the chain as
// intermediates.
func checkIssued(resp wire.CertificateResponse, key crypto.Signer, roots []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	chain, err := parseCerts([]byte(resp.Certificate))
	if err != nil {
		return nil, fmt.Errorf("the CA's answer: %w", err)
	}
	leaf := chain[0]
	if !samePublicKey(leaf, key) {
		return nil, errors.New("the CA's answer certifies another key than the one requested")
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("the issued certificate does not verify up to the site's root: %w", err)
	}
	if DeviceIDOf(leaf) == "" {
		return nil, fmt.Errorf("the issued certificate names no device id (%s URI)", DeviceURIPrefix)
	}
	return chain, nil
}

// shortHostname returns the host name up to its first dot.
func shortHostname() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("reading the host name (pass a device name instead): %w", err)
	}
	if i := strings.IndexByte(h, '.'); i > 0 {
		h = h[:i]
	}
	if h == "" {
		return "", errors.New("the host name is empty; pass a device name")
	}
	return h, nil
}
