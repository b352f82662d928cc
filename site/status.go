package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Health is what `ibcm site status` reports for one listener.
type Health struct {
	Role      string `json:"role"`
	URL       string `json:"url"`
	Healthy   bool   `json:"healthy"`
	Error     string `json:"error,omitempty"`
	LatencyMS int64  `json:"latency_ms"`
}

// Status asks every listener of the given roles (all when none) for GET /healthz, trusting
// the site's root and presenting the admin certificate where a client certificate is required.
func Status(ctx context.Context, cfg *Config, roles ...string) ([]Health, error) {
	rootPEM, err := os.ReadFile(cfg.Path(cfg.CA.RootCert))
	if err != nil {
		return nil, fmt.Errorf("ca.root_cert: %w", err)
	}
	roots, err := ca.ParseCerts(rootPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	tlsCfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	// The MP's listeners want a client certificate in the handshake: use the admin's.
	if pair, err := tls.LoadX509KeyPair(cfg.Path(AdminCert), cfg.Path(AdminKey)); err == nil {
		tlsCfg.Certificates = []tls.Certificate{pair}
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	var out []Health
	for _, l := range cfg.Listeners(roles...) {
		h := Health{Role: l.Role, URL: l.URL}
		start := time.Now()
		err := checkHealth(ctx, client, strings.TrimSuffix(l.URL, "/")+"/healthz")
		h.LatencyMS = time.Since(start).Milliseconds()
		if err != nil {
			h.Error = err.Error()
		} else {
			h.Healthy = true
		}
		out = append(out, h)
	}
	return out, nil
}

func checkHealth(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h wire.Health
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&h); err != nil {
		return fmt.Errorf("HTTP %d, unreadable health body: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || h.Status != "ok" {
		return fmt.Errorf("HTTP %d, status %q", resp.StatusCode, h.Status)
	}
	return nil
}
