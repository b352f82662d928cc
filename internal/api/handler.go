package api

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// HandlerFunc is an HTTP handler that returns its error instead of writing it.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts fn: an error is sent with WriteError and logged once, with the request id,
// the peer's address and certificate identity, the status and the duration. Client errors
// log at warn, server errors at error with the internal cause.
func Handle(log zerolog.Logger, fn HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		err := fn(w, r)
		if err == nil {
			return
		}
		WriteError(w, err)
		status := StatusOf(err)
		ev := log.Warn()
		if status >= 500 {
			ev = log.Error()
		}
		ev = ev.Str("request_id", requestID()).Str("method", r.Method).Str("path", RedactPath(r.URL.Path)).
			Str("remote_addr", r.RemoteAddr).Int("status", status).
			Int64("duration_ms", time.Since(start).Milliseconds()).Err(err)
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			c := r.TLS.PeerCertificates[0]
			ev = ev.Str("peer_subject", c.Subject.CommonName).Str("serial", wire.FormatSerial(c.SerialNumber))
		}
		ev.Msg("request refused")
	})
}

func requestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// SecretPrefix starts every secret the site hands out (enrollment tokens), so one pasted
// where it does not belong can be recognised and kept out of logs and answers.
const SecretPrefix = "ibcm_"

// RedactPath replaces every path segment that is a secret with "ibcm_<redacted>".
func RedactPath(path string) string {
	if !strings.Contains(path, SecretPrefix) {
		return path
	}
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if strings.HasPrefix(p, SecretPrefix) {
			parts[i] = SecretPrefix + "<redacted>"
		}
	}
	return strings.Join(parts, "/")
}
