package ca

import (
	"context"
	"fmt"
	"time"
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

// Prepare makes sure a current CRL, an OCSP signing certificate and a content signer
// (valid for more than contentSignerRenew) exist.
func (c *CA) Prepare(ctx context.Context) error {
	if c.crlDue() {
		if err := c.RefreshCRL(); err != nil {
			return err
		}
	}
	if _, _, err := c.contentSigner(ctx); err != nil {
		return err
	}
	return c.rotateResponder(ctx)
}

// Run keeps the CA's published state fresh until ctx is done: a new CRL before the current
// one has less than a third of its life left, and a new OCSP signing certificate at two
// thirds of the current one's life. It checks every interval (a minute when zero). While
// it runs, OCSP responses are cached and forgotten as revocations are announced.
func (c *CA) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Minute
	}
	go c.watchRevocations(ctx, interval)
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
