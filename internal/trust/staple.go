package trust

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/ocsp"
)

// StapledCert is a server's own certificate with a fresh OCSP response for it stapled to
// every handshake. The response is fetched from the certificate's OCSP URL and refreshed at
// half of its validity; when the responder cannot be reached the certificate is served
// without a staple rather than not at all.
type StapledCert struct {
	mu     sync.RWMutex
	cert   *tls.Certificate
	leaf   *x509.Certificate
	issuer *x509.Certificate
	next   time.Time // when to fetch again
	expiry time.Time // NextUpdate of the stapled response
	client *http.Client
	log    zerolog.Logger
}

// NewStapledCert loads a key pair whose certificate file holds the leaf followed by its
// issuing CA.
func NewStapledCert(certFile, keyFile string, log zerolog.Logger) (*StapledCert, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if len(pair.Certificate) < 2 {
		return nil, fmt.Errorf("%s: the file must hold the certificate and its issuing CA", certFile)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	issuer, err := x509.ParseCertificate(pair.Certificate[1])
	if err != nil {
		return nil, err
	}
	pair.Leaf = leaf
	return &StapledCert{cert: &pair, leaf: leaf, issuer: issuer, log: log, client: &http.Client{Timeout: 5 * time.Second}}, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (s *StapledCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert, nil
}

// Leaf returns the certificate.
func (s *StapledCert) Leaf() *x509.Certificate { return s.leaf }

// Refresh fetches a new OCSP response and staples it.
func (s *StapledCert) Refresh(ctx context.Context) error {
	if len(s.leaf.OCSPServer) == 0 {
		return errors.New("the certificate names no OCSP responder")
	}
	req, err := ocsp.CreateRequest(s.leaf, s.issuer, &ocsp.RequestOptions{})
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, s.leaf.OCSPServer[0], bytes.NewReader(req))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/ocsp-request")
	resp, err := s.client.Do(hr)
	if err != nil {
		return fmt.Errorf("asking %s: %w", s.leaf.OCSPServer[0], err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
	}
	parsed, err := ocsp.ParseResponseForCert(der, s.leaf, s.issuer)
	if err != nil {
		return fmt.Errorf("OCSP response from %s: %w", s.leaf.OCSPServer[0], err)
	}
	if parsed.Status != ocsp.Good {
		s.setStaple(nil, time.Time{}, time.Time{}) // never staple an old "good" over a revocation
		return fmt.Errorf("the OCSP responder says this server's certificate is not good (status %d)", parsed.Status)
	}
	life := parsed.NextUpdate.Sub(parsed.ThisUpdate)
	if parsed.NextUpdate.IsZero() || life <= 0 {
		life = time.Hour
	}
	s.setStaple(der, time.Now().Add(life/2), parsed.ThisUpdate.Add(life))
	return nil
}

func (s *StapledCert) setStaple(der []byte, next, expiry time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *s.cert
	c.OCSPStaple = der
	s.cert, s.next, s.expiry = &c, next, expiry
}

// dropExpired stops stapling a response past its NextUpdate.
func (s *StapledCert) dropExpired() {
	s.mu.RLock()
	stale := s.cert.OCSPStaple != nil && !s.expiry.IsZero() && time.Now().After(s.expiry)
	s.mu.RUnlock()
	if stale {
		s.setStaple(nil, time.Time{}, time.Time{})
	}
}

// Run keeps the staple fresh until ctx is done, retrying every retry after a failure.
func (s *StapledCert) Run(ctx context.Context, retry time.Duration) {
	for {
		wait := retry
		if err := s.Refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn().Err(err).Msg("OCSP staple not refreshed; serving without a fresh one")
			s.dropExpired()
		} else {
			s.mu.RLock()
			wait = max(time.Until(s.next), retry)
			s.mu.RUnlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
