// Package wire holds the JSON types spoken over HTTPS between the site's roles and the
// ibcm-client agent and admin CLI. It has no logic and imports only the standard library,
// so the agent can link it without pulling in server code.
package wire

import "time"

// MaxBody is the largest request body any API of the site accepts.
const MaxBody = 64 << 10

// Error is the body of every error response: {"error": {"code": ..., "message": ...}}.
type Error struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what went wrong: a stable machine code and a message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// EnrollRequest asks the CA for a certificate with a one-time enrollment token.
type EnrollRequest struct {
	Token   string `json:"token"`
	Profile string `json:"profile,omitempty"` // defaults to "client"
	CSR     string `json:"csr"`               // PEM "CERTIFICATE REQUEST"
}

// RenewRequest asks the CA for a new certificate for the identity presented in the TLS
// handshake. With CSR set the new certificate gets the CSR's key (rekey); without it the
// old key is kept.
type RenewRequest struct {
	CSR string `json:"csr,omitempty"`
}

// CertificateResponse carries an issued certificate and its chain up to, not including, the root.
type CertificateResponse struct {
	Serial      string    `json:"serial"`     // decimal
	SerialHex   string    `json:"serial_hex"` // upper-case hex, as openssl prints it
	NotAfter    time.Time `json:"not_after"`
	Certificate string    `json:"certificate"` // PEM: leaf followed by the issuing chain
}

// Bundle is the site's trust bundle: the root certificates clients and servers trust.
type Bundle struct {
	Roots string `json:"roots"` // PEM, one or more "CERTIFICATE" blocks
}

// TokenCreateRequest asks for a new enrollment token (admin API).
type TokenCreateRequest struct {
	Profile string `json:"profile"`
	Subject string `json:"subject,omitempty"`
	Uses    int    `json:"uses,omitempty"` // defaults to 1
	TTL     string `json:"ttl,omitempty"`  // Go duration, defaults to 24h
}

// Token describes an enrollment token without its secret.
type Token struct {
	ID        string    `json:"id"`
	Profile   string    `json:"profile"`
	Subject   string    `json:"subject,omitempty"`
	UsesLeft  int       `json:"uses_left"`
	Uses      int       `json:"uses"`
	ExpiresAt time.Time `json:"expires_at"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
	Revoked   bool      `json:"revoked"`
}

// TokenCreated is the answer to TokenCreateRequest: the only time the secret is shown.
type TokenCreated struct {
	Token
	Secret string `json:"token"`
}

// IssueRequest asks the CA to issue a certificate for a CSR made by the admin CLI (admin API).
type IssueRequest struct {
	Profile string   `json:"profile"`
	Subject string   `json:"subject"`
	DNS     []string `json:"dns,omitempty"`
	Role    string   `json:"role,omitempty"` // site-server only: ca, mp or dp
	CSR     string   `json:"csr"`
}

// Certificate describes an issued certificate (admin API).
type Certificate struct {
	Serial      string     `json:"serial"`
	SerialHex   string     `json:"serial_hex"`
	Profile     string     `json:"profile"`
	Subject     string     `json:"subject"`
	DNS         []string   `json:"dns,omitempty"`
	URIs        []string   `json:"uris,omitempty"`
	NotBefore   time.Time  `json:"not_before"`
	NotAfter    time.Time  `json:"not_after"`
	Status      string     `json:"status"` // valid, revoked or expired
	IssuedBy    string     `json:"issued_by"`
	RenewedFrom string     `json:"renewed_from,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	PEM         string     `json:"pem,omitempty"`
}

// RevokeRequest revokes a certificate (admin API). Reason is an RFC 5280 name such as
// keyCompromise or superseded.
type RevokeRequest struct {
	Reason string `json:"reason"`
}

// Health is the body of GET /healthz on every listener.
type Health struct {
	Status string `json:"status"` // "ok"
	Role   string `json:"role"`
}
