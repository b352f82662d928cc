package wire

import (
	"crypto/x509"
	"encoding/asn1"
	"time"
)

// Security codes for unenrolled devices (Remote Help's "get a security code", DESIGN.md §9
// step 9). A helper makes a code at the MP; the sharer's `ibcm-client share --code` sends
// it with a CSR to the CA, which answers with a guest certificate for that one session:
//
//	POST /v1/admin/sessions/codes   MP, OfferRemoteAssistance: SecurityCodeRequest → SecurityCode
//	POST /v1/guest/exchange         CA, no client certificate: GuestExchangeRequest → GuestCertificate
//	GET  /v1/guest/sessions/{id}/relay  MP, the guest certificate of session id: the device's leg
//	                                    (?ticket=, Upgrade: ibcm-relay), the only route that takes it
//
// Refusals of the exchange: 401 code_invalid (no such code, or not a code at all),
// 403 code_expired, 409 code_used, 429 rate_limited (Retry-After), 404 security_codes_disabled.

// OIDGuestEKU is the extended key usage of a guest certificate, instead of clientAuth: a
// private OID of ours, so that no TLS stack, ours included, accepts a guest certificate
// where it wants clientAuth or serverAuth. Only the relay of the certificate's own session
// asks for it. It is built from a random UUID split into arcs under 2.25, because Go's
// certificate parser takes no arc above 2^63 (a proper 2.25.<uuid> would make the whole
// certificate unparsable); it should move under the project's IANA enterprise number once
// there is one.
var OIDGuestEKU = asn1.ObjectIdentifier{2, 25, 117140762, 707690510, 599815126, 736893987, 11}

// IsGuestCertificate says whether c carries the guest EKU (and so is a guest certificate,
// not that it is trusted).
func IsGuestCertificate(c *x509.Certificate) bool {
	for _, o := range c.UnknownExtKeyUsage {
		if o.Equal(OIDGuestEKU) {
			return true
		}
	}
	return false
}

// GuestURIPrefix starts the URI of a guest certificate; the session id follows.
const GuestURIPrefix = "urn:ibcm:guest:"

// SecurityCodeRequest is `ibcm remote code create`.
type SecurityCodeRequest struct {
	Mode   string `json:"mode"` // view (default) or control
	Reason string `json:"reason,omitempty"`
}

// SecurityCode is a new code, shown once: only its hash is stored.
type SecurityCode struct {
	Code      string    `json:"code"` // XXXXX-XXXXX
	ID        string    `json:"id"`   // what the audit names it by
	Session   string    `json:"session"`
	Mode      string    `json:"mode"`
	ExpiresAt time.Time `json:"expires_at"`
	// Start is the helper's leg, as `ibcm remote start` gets it: its relay ticket.
	Start SessionStart `json:"start"`
}

// GuestExchangeRequest is what the sharer's agent sends the CA.
type GuestExchangeRequest struct {
	Code string `json:"code"`
	CSR  string `json:"csr"` // PEM; its common name is the sharer's local user name
}

// GuestCertificate answers an exchange: the certificate (one hour) and the session it is for.
type GuestCertificate struct {
	CertificateResponse
	Session  string `json:"session"`
	Helper   string `json:"helper"`
	Mode     string `json:"mode"`
	TicketID string `json:"ticket_id"` // the relay leg: GET /v1/guest/sessions/{session}/relay?ticket=
	Ticket   string `json:"ticket"`    // signed by the MP (remote/ticket): names the helper's key
}
