package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// DefaultTimeout bounds each request to the CA unless an option says otherwise.
const DefaultTimeout = 30 * time.Second

// maxResponse bounds a response body of the CA; a certificate chain is a few kilobytes.
const maxResponse = 1 << 20

// ParseFingerprint parses a SHA-256 fingerprint: 64 hex digits, upper or lower case,
// optionally separated by colons (as `openssl x509 -fingerprint -sha256` prints it).
func ParseFingerprint(s string) ([]byte, error) {
	h := strings.TrimSpace(s)
	if i := strings.LastIndex(h, "="); i >= 0 { // "sha256 Fingerprint=AB:CD:..." from openssl
		h = h[i+1:]
	}
	h = strings.ReplaceAll(h, ":", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("root SHA-256 %q: must be 64 hex digits, colons allowed", s)
	}
	return b, nil
}

// Fingerprint returns the SHA-256 of a certificate's DER as colon-separated upper-case
// hex, the form openssl prints.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return formatFingerprint(sum[:])
}

func formatFingerprint(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02X", x)
	}
	return strings.Join(parts, ":")
}

// parseCAURL checks the CA's base URL: https, with a host.
func parseCAURL(s string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("CA URL %q: must be an https URL such as https://ca.corp.example:8443", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("CA URL %q: must not carry a query, fragment or user", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// verifyPinned returns a tls.Config.VerifyConnection function that accepts the server
// only when its presented chain contains a self-signed CA certificate whose SHA-256 is
// pin, and the server's leaf verifies up to that root (the rest of the presented chain as
// intermediates) for host at now. It is used with InsecureSkipVerify, which only turns
// off the standard verification this function replaces: it is never skipped.
func verifyPinned(pin []byte, host string, now func() time.Time) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		certs := cs.PeerCertificates
		if len(certs) == 0 {
			return fmt.Errorf("%w: %s presented no certificate", ErrPinMismatch, host)
		}
		var root *x509.Certificate
		for _, c := range certs {
			sum := sha256.Sum256(c.Raw)
			if bytes.Equal(sum[:], pin) {
				root = c
				break
			}
		}
		if root == nil {
			e := &PinError{Host: host, Expected: formatFingerprint(pin)}
			for _, c := range certs {
				e.Presented = append(e.Presented, fmt.Sprintf("%q %s", c.Subject.CommonName, Fingerprint(c)))
			}
			return e
		}
		if !root.IsCA || !bytes.Equal(root.RawSubject, root.RawIssuer) || root.CheckSignatureFrom(root) != nil {
			return fmt.Errorf("%w: the certificate with the pinned SHA-256 (%q) is not a self-signed CA certificate", ErrPinMismatch, root.Subject.CommonName)
		}
		roots := x509.NewCertPool()
		roots.AddCert(root)
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			if c != root {
				inter.AddCert(c)
			}
		}
		_, err := certs[0].Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: inter, DNSName: host, CurrentTime: now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("the CA's certificate %q does not verify up to the pinned root %q: %w", certs[0].Subject.CommonName, root.Subject.CommonName, err)
		}
		return nil
	}
}

// pinnedTLS is the TLS configuration for talking to the CA before the device has roots.
func pinnedTLS(pin []byte, host string, now func() time.Time) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced, not skipped: VerifyConnection checks the pin and the chain
		VerifyConnection:   verifyPinned(pin, host, now),
		Time:               now,
	}
}

// newHTTPClient returns an HTTP client for the CA with the given TLS configuration.
func newHTTPClient(cfg *tls.Config, timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:     cfg,
			TLSHandshakeTimeout: 10 * time.Second,
			ForceAttemptHTTP2:   true,
			IdleConnTimeout:     30 * time.Second,
			MaxIdleConns:        2,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the CA answered with a redirect; use the CA's URL itself")
		},
	}
}

// call sends body (nil for GET) as JSON to base+path and decodes a 2xx answer into out.
// An error answer becomes a *ServerError.
func call(ctx context.Context, hc *http.Client, method string, base *url.URL, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base.String()+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err // a *url.Error: it names the method and URL
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if len(data) > maxResponse {
		return fmt.Errorf("%s %s: the answer is larger than %d bytes", method, path, maxResponse)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return serverError(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

func serverError(status int, body []byte) *ServerError {
	var e wire.Error
	if err := json.Unmarshal(body, &e); err == nil && e.Error.Code != "" {
		return &ServerError{Status: status, Code: e.Error.Code, Message: e.Error.Message}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &ServerError{Status: status, Message: msg}
}
