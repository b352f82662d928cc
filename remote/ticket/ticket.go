// Package ticket is the session ticket of remote control: a management point signs one for
// every leg of a session (the helper's, and each viewer's), the device learns it through its
// notification channel, and the agent runs nothing for a helper before the ticket checks out:
// signed by a management-point certificate of this site that chains to the agent's pinned
// roots and is not revoked, for this device, not expired, not seen before.
//
// A ticket is written "v1.<payload>.<chain>.<signature>", each part unpadded base64url: the
// payload is the JSON of Ticket, the chain the DER certificates of the signer (leaf first),
// and the signature is the signer's over "v1.<payload>.<chain>" with SHA-256 (ECDSA ASN.1,
// RSA PKCS #1 v1.5, or Ed25519 over the bytes). It imports only the standard library and
// internal/wire, so the agent links it.
package ticket

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// MaxLen bounds a ticket as sent: a payload of a few hundred bytes and a chain of two
// certificates fit many times over.
const MaxLen = 16 << 10

// MaxLifetime is the longest a ticket may be valid; longer ones are refused even when signed.
const MaxLifetime = 15 * time.Minute

// ClockSkew is how far in the future a ticket's IssuedAt may be (the MP's clock ahead of
// the device's).
const ClockSkew = 2 * time.Minute

// Modes of a session (DESIGN.md §9).
const (
	ModeView       = "view"
	ModeControl    = "control"
	ModeElevated   = "elevated"
	ModeUnattended = "unattended"
)

// Kinds of a session (Ticket.Kind).
const (
	KindTerminal = ""       // a terminal: the sharer's, a new shell, a root shell
	KindScreen   = "screen" // the display, over RFB (remote/rfb)
)

// Roles of a leg.
const (
	RoleHelper = "helper" // the helper who started the session
	RoleViewer = "viewer" // a second helper who joined to watch
)

// Card is who the helper is, as the sharer sees it (Remote Help's identity card).
type Card struct {
	User         string `json:"user"`
	DisplayName  string `json:"display_name,omitempty"`
	Title        string `json:"title,omitempty"`
	Organization string `json:"organization,omitempty"`
}

// Ticket is what an MP signs for one leg of a session.
type Ticket struct {
	ID      string `json:"id"`      // 32 hex digits, unique per ticket: the replay key and the relay leg
	Session string `json:"session"` // the session id (shared by its legs)
	Device  string `json:"device"`  // device id the ticket is for
	// Helper is the user; HelperKey the hex SHA-256 of the SubjectPublicKeyInfo of the
	// certificate they started the session with: the end-to-end TLS must present that key.
	Helper    string   `json:"helper"`
	HelperKey string   `json:"helper_key"`
	Card      Card     `json:"card"`
	Role      string   `json:"role"`  // RoleHelper or RoleViewer
	Mode      string   `json:"mode"`  // the mode asked for at the start
	Modes     []string `json:"modes"` // every mode the helper may use (permissions ∩ policy)
	// Kind is what the session shows: KindTerminal ("", the default) or KindScreen.
	Kind   string `json:"kind,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Direct: the helper is on the intranet and policy allows direct connections, so the
	// agent may open its session port (when it is on the intranet too).
	Direct bool `json:"direct,omitempty"`
	// Console: the helper works in the web console, so the helper's end of the end-to-end
	// TLS is the MP itself (HelperKey is the key hash of the MP's site-server certificate,
	// MP its id): the session ends at the MP and is not end-to-end to the helper. Always
	// over the relay (Direct false). The agent may refuse these (its local setting).
	Console   bool      `json:"console,omitempty"`
	MP        string    `json:"mp"` // id of the MP that signed (and relays)
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Errors of Verify, each with its own code for the audit (Code).
var (
	ErrMalformed   = errors.New("ticket malformed")
	ErrSigner      = errors.New("ticket not signed by a management point of this site")
	ErrSignature   = errors.New("ticket signature invalid")
	ErrRevoked     = errors.New("ticket signer revoked")
	ErrOtherDevice = errors.New("ticket is for another device")
	ErrExpired     = errors.New("ticket expired")
	ErrReplayed    = errors.New("ticket already used")
)

// Code is the stable error code of a Verify error ("ticket_expired", …), for reports.
func Code(err error) string {
	for e, c := range map[error]string{ErrMalformed: "ticket_malformed", ErrSigner: "ticket_signer", ErrSignature: "ticket_signature",
		ErrRevoked: "ticket_signer_revoked", ErrOtherDevice: "ticket_other_device", ErrExpired: "ticket_expired", ErrReplayed: "ticket_replayed"} {
		if errors.Is(err, e) {
			return c
		}
	}
	return "ticket_invalid"
}

// NewID returns a random 128-bit id in hex (tickets and sessions).
func NewID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Check validates the fields of a ticket as a signer must write them.
func (t *Ticket) Check() error {
	if !ValidID(t.ID) || !ValidID(t.Session) {
		return fmt.Errorf("%w: id and session must be 32 hex digits", ErrMalformed)
	}
	if t.Device == "" || len(t.Device) > 128 || t.Helper == "" || len(t.Helper) > 128 || len(t.HelperKey) != 64 {
		return fmt.Errorf("%w: device, helper and helper key are required", ErrMalformed)
	}
	if t.Role != RoleHelper && t.Role != RoleViewer {
		return fmt.Errorf("%w: role %q", ErrMalformed, t.Role)
	}
	if !ValidMode(t.Mode) || len(t.Modes) == 0 || len(t.Modes) > 4 {
		return fmt.Errorf("%w: mode %q", ErrMalformed, t.Mode)
	}
	for _, m := range t.Modes {
		if !ValidMode(m) {
			return fmt.Errorf("%w: mode %q", ErrMalformed, m)
		}
	}
	if t.Kind != KindTerminal && t.Kind != KindScreen {
		return fmt.Errorf("%w: kind %q", ErrMalformed, t.Kind)
	}
	if !t.Allows(t.Mode) {
		return fmt.Errorf("%w: mode %q is not among the allowed modes", ErrMalformed, t.Mode)
	}
	if len(t.Reason) > 512 || len(t.Card.DisplayName) > 256 || len(t.Card.Title) > 256 || len(t.Card.Organization) > 256 {
		return fmt.Errorf("%w: text too long", ErrMalformed)
	}
	if t.Console && t.Direct {
		return fmt.Errorf("%w: a console ticket goes over the relay, never direct", ErrMalformed)
	}
	if t.Console && t.MP == "" {
		return fmt.Errorf("%w: a console ticket names its MP", ErrMalformed)
	}
	if t.ExpiresAt.Before(t.IssuedAt) || t.ExpiresAt.Sub(t.IssuedAt) > MaxLifetime {
		return fmt.Errorf("%w: lifetime must be at most %s", ErrMalformed, MaxLifetime)
	}
	return nil
}

// Allows reports whether mode is among the ticket's modes.
func (t *Ticket) Allows(mode string) bool {
	for _, m := range t.Modes {
		if m == mode {
			return true
		}
	}
	return false
}

// ValidMode reports whether m is a session mode.
func ValidMode(m string) bool {
	return m == ModeView || m == ModeControl || m == ModeElevated || m == ModeUnattended
}

// ValidID reports whether s is an id as NewID makes them (tickets, sessions): 32
// lower-case hex digits.
func ValidID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

var b64 = base64.RawURLEncoding

// Sign writes t signed by signer, whose certificate chain (leaf first) travels with it.
func Sign(t Ticket, signer crypto.Signer, chain []*x509.Certificate) (string, error) {
	if err := t.Check(); err != nil {
		return "", err
	}
	if len(chain) == 0 {
		return "", errors.New("ticket: a signer certificate is required")
	}
	payload, err := json.Marshal(t)
	if err != nil {
		return "", err
	}
	var der []byte
	for _, c := range chain {
		der = append(der, c.Raw...)
	}
	signed := "v1." + b64.EncodeToString(payload) + "." + b64.EncodeToString(der)
	var sig []byte
	switch signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = signer.Sign(rand.Reader, []byte(signed), crypto.Hash(0))
	default:
		sum := sha256.Sum256([]byte(signed))
		sig, err = signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		return "", fmt.Errorf("signing the ticket: %w", err)
	}
	s := signed + "." + b64.EncodeToString(sig)
	if len(s) > MaxLen {
		return "", fmt.Errorf("ticket: %d bytes, more than %d", len(s), MaxLen)
	}
	return s, nil
}

// Signed is a parsed ticket whose signature has not been checked yet.
type Signed struct {
	Ticket Ticket
	Chain  []*x509.Certificate
	signed []byte
	sig    []byte
}

// Parse reads a ticket strictly (size, form, JSON with no unknown fields, fields checked)
// without trusting it: Verify does that.
func Parse(s string) (*Signed, error) {
	if len(s) > MaxLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxLen)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 || parts[0] != "v1" {
		return nil, fmt.Errorf("%w: want v1.<payload>.<chain>.<signature>", ErrMalformed)
	}
	payload, err1 := b64.DecodeString(parts[1])
	der, err2 := b64.DecodeString(parts[2])
	sig, err3 := b64.DecodeString(parts[3])
	if err := errors.Join(err1, err2, err3); err != nil || len(sig) == 0 || len(der) == 0 {
		return nil, fmt.Errorf("%w: bad base64url", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var t Ticket
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the payload", ErrMalformed)
	}
	if err := t.Check(); err != nil {
		return nil, err
	}
	chain, err := x509.ParseCertificates(der)
	if err != nil || len(chain) > 4 {
		return nil, fmt.Errorf("%w: signer chain: %v", ErrMalformed, err)
	}
	return &Signed{Ticket: t, Chain: chain, signed: []byte(s[:len(s)-len(parts[3])-1]), sig: sig}, nil
}

// VerifyOptions are what the agent checks a ticket against.
type VerifyOptions struct {
	Roots    *x509.CertPool // the agent's pinned site roots
	SiteCode string         // the signer must carry urn:ibcm:site:<SiteCode>:role:mp
	Device   string         // this device's id
	Now      time.Time
	// Revoked reports whether a certificate is revoked (the agent's verified CRL); nil
	// checks nothing.
	Revoked func(*x509.Certificate) bool
}

// Verify checks the signer (chains to Roots with serverAuth at Now, is an MP of SiteCode,
// not revoked), the signature, the device, the validity window, and for a console ticket
// that HelperKey is the signer's key. Replays are the
// caller's (Seen).
func (s *Signed) Verify(o VerifyOptions) (*Ticket, error) {
	leaf := s.Chain[0]
	inter := x509.NewCertPool()
	for _, c := range s.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: o.Roots, Intermediates: inter, CurrentTime: o.Now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSigner, err)
	}
	if id := wire.Identify(leaf); id.Kind != wire.KindServer || id.ID != "mp" || id.Site != o.SiteCode {
		return nil, fmt.Errorf("%w: the signer is %s %s of site %q", ErrSigner, id.Kind, id.ID, id.Site)
	}
	if o.Revoked != nil {
		for _, c := range s.Chain {
			if o.Revoked(c) {
				return nil, fmt.Errorf("%w: serial %s", ErrRevoked, wire.FormatSerial(c.SerialNumber))
			}
		}
	}
	if err := checkSignature(leaf, s.signed, s.sig); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	t := s.Ticket
	// A console ticket's helper end is the MP that signed it: its own key, no other (the
	// device's end-to-end TLS then requires that key, remote/e2e).
	if t.Console && t.HelperKey != wire.PublicKeyHash(leaf) {
		return nil, fmt.Errorf("%w: a console ticket names another key than its signer's", ErrMalformed)
	}
	if t.Device != o.Device {
		return nil, fmt.Errorf("%w: %s", ErrOtherDevice, t.Device)
	}
	if o.Now.After(t.ExpiresAt) || t.IssuedAt.After(o.Now.Add(ClockSkew)) {
		return nil, fmt.Errorf("%w: valid %s to %s", ErrExpired, t.IssuedAt.UTC().Format(time.RFC3339), t.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return &t, nil
}

func checkSignature(c *x509.Certificate, signed, sig []byte) error {
	switch pub := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(signed)
		if !ecdsa.VerifyASN1(pub, sum[:], sig) {
			return errors.New("ECDSA verification failed")
		}
	case *rsa.PublicKey:
		sum := sha256.Sum256(signed)
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig)
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, signed, sig) {
			return errors.New("Ed25519 verification failed")
		}
	default:
		return fmt.Errorf("unsupported key %T", pub)
	}
	return nil
}

// Seen remembers the tickets used, until they expire: a ticket is used once.
type Seen struct {
	mu  sync.Mutex
	ids map[string]time.Time // ticket id → expiry
}

// Use records t as used; it returns ErrReplayed when it was used before.
func (s *Seen) Use(t *Ticket, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]time.Time{}
	}
	for id, exp := range s.ids {
		if now.After(exp) {
			delete(s.ids, id)
		}
	}
	if _, ok := s.ids[t.ID]; ok {
		return fmt.Errorf("%w: %s", ErrReplayed, t.ID)
	}
	s.ids[t.ID] = t.ExpiresAt
	return nil
}
