// Package e2e is the end-to-end TLS 1.3 of a remote-control session: the helper is the TLS
// client with its user certificate, the device the TLS server with its device certificate,
// and each checks the other against the site's roots and the ticket, over whatever carries
// the bytes (the MP's relay, or the device's session port on the intranet). A relay sees
// only ciphertext. For a session of the web console (ticket.Console) the helper's end is the
// MP that signed the ticket, with its site-server certificate (ConsoleConfig, and
// HelperExpect.Console on the device's side): such a session is not end to end to the
// person helping. It also holds the CRL both ends check the other against. It imports only
// the standard library, internal/wire and internal/atomicfile.
package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// ALPN names the protocol inside, so that a session stream is never taken for anything else.
const ALPN = "ibcm-session/1"

// DirectPreamble starts a direct connection to a device's session port, before TLS: the
// ticket id that names the leg, then a newline.
const DirectPreamble = "IBCM-SESSION "

// MaxPreamble bounds the preamble line (DirectPreamble + 32 hex digits + "\n").
const MaxPreamble = len(DirectPreamble) + 33

// ErrPeer is wrapped by every refusal of the other side's certificate.
var ErrPeer = errors.New("end-to-end peer refused")

// HelperExpect is what the device requires of the helper's certificate: the ticket's user
// and key, chained to the site's roots, clientAuth, valid now, not revoked.
//
// For a console ticket (Console: the helper works in the web console, whose session ends at
// the MP) the helper's end is the MP that signed the ticket instead: a site-server
// certificate of role mp of Site whose key is KeyHash (ticket.Verify has checked that it is
// the signer's key; the common name is not compared, for MPs that share one certificate
// have one name and several ids); a user certificate is then refused. Without Console a site-server certificate is
// refused, whatever it names.
type HelperExpect struct {
	Roots   *x509.CertPool
	User    string // ticket.Helper
	KeyHash string // ticket.HelperKey
	Now     func() time.Time
	Revoked func(*x509.Certificate) bool // the agent's verified CRL; nil checks nothing

	Console bool   // ticket.Console
	MP      string // ticket.MP: the console's MP, for the messages
	Site    string // this device's site code: the console's MP must be of it
}

// check is the device's check of the helper's verified leaf.
func (e HelperExpect) check(leaf *x509.Certificate) error {
	id := wire.Identify(leaf)
	if e.Console {
		if id.Kind != wire.KindServer || id.ID != "mp" || e.Site == "" || id.Site != e.Site {
			return fmt.Errorf("%w: a console session's helper end must be a management point of site %q; got %s %q of site %q", ErrPeer, e.Site, id.Kind, id.ID, id.Site)
		}
		// The key, not the common name: the MPs of a site may share one certificate (its
		// common name then the first MP's id, not ticket.MP), and ticket.Verify has bound
		// KeyHash to the very certificate that signed the ticket.
		if got := wire.PublicKeyHash(leaf); e.KeyHash == "" || got != e.KeyHash {
			return fmt.Errorf("%w: management point %q (certificate %q) presented another key than the one its ticket names", ErrPeer, e.MP, leaf.Subject.CommonName)
		}
		return nil
	}
	if id.Kind != wire.KindUser || id.ID != e.User {
		return fmt.Errorf("%w: the certificate names %s %q, the ticket user %q", ErrPeer, id.Kind, id.ID, e.User)
	}
	if got := wire.PublicKeyHash(leaf); got != e.KeyHash {
		return fmt.Errorf("%w: user %q presented another key than the one the session was started with", ErrPeer, e.User)
	}
	return nil
}

// DeviceConfig is the device's side: TLS 1.3 server with the device certificate, a client
// certificate required and checked against e.
func DeviceConfig(cert tls.Certificate, e HelperExpect) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.RequireAnyClientCert, // verified below, against the ticket
		NextProtos:   []string{ALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf, err := verifyChain(cs.PeerCertificates, e.Roots, now(e.Now), e.Revoked)
			if err != nil {
				return err
			}
			if err := e.check(leaf); err != nil {
				return err
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("%w: protocol %q, want %q", ErrPeer, cs.NegotiatedProtocol, ALPN)
			}
			return nil
		},
	}
}

// HelperConfig is the helper's side: TLS 1.3 client with the user certificate, requiring
// the device certificate of device (a site client certificate naming urn:ibcm:device:<id>).
// A device of the form urn:ibcm:guest:<session> is an unenrolled device that exchanged a
// security code: then the guest certificate of that session is required instead (the
// guest-only EKU, no clientAuth), and nothing else.
// With crl (the issuing CA's list, as the helper's MP serves it), a device certificate on
// it is refused, and so is a list its issuing CA did not sign: a direct connection reaches
// the device with no MP in between to check it.
func HelperConfig(cert tls.Certificate, roots *x509.CertPool, device string, clock func() time.Time, crl *x509.RevocationList) *tls.Config {
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPN},
		InsecureSkipVerify: true, // device certificates have no server name: verified below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if session, ok := strings.CutPrefix(device, wire.GuestURIPrefix); ok {
				return verifyGuest(cs, roots, now(clock), session, crl)
			}
			chain, err := verifiedChain(cs.PeerCertificates, roots, now(clock), nil)
			if err != nil {
				return err
			}
			leaf := chain[0]
			if id := wire.Identify(leaf); id.Kind != wire.KindDevice || id.ID != device {
				return fmt.Errorf("%w: the device presented %s %q, want device %q", ErrPeer, id.Kind, id.ID, device)
			}
			if crl != nil {
				if err := checkCRL(crl, chain); err != nil {
					return err
				}
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("%w: protocol %q, want %q", ErrPeer, cs.NegotiatedProtocol, ALPN)
			}
			return nil
		},
	}
}

// ConsoleConfig is the helper's side when the helper is the MP itself, for the web console
// (a ticket with Console): HelperConfig with the MP's site-server certificate (which
// carries clientAuth too) as the client certificate.
func ConsoleConfig(mpCert tls.Certificate, roots *x509.CertPool, device string, clock func() time.Time, crl *x509.RevocationList) *tls.Config {
	return HelperConfig(mpCert, roots, device, clock, crl)
}

// verifyGuest is the helper's check of a guest: a guest certificate of session, chained
// to the site's roots and valid now.
func verifyGuest(cs tls.ConnectionState, roots *x509.CertPool, at time.Time, session string, crl *x509.RevocationList) error {
	if len(cs.PeerCertificates) == 0 || !wire.IsGuestCertificate(cs.PeerCertificates[0]) {
		return fmt.Errorf("%w: the session is with an unenrolled device, which presented no guest certificate", ErrPeer)
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPeer, err)
	}
	if id := wire.Identify(leaf); id.Kind != wire.KindGuest || id.ID != session {
		return fmt.Errorf("%w: the guest certificate names %s %q, want the guest of session %q", ErrPeer, id.Kind, id.ID, session)
	}
	if crl != nil {
		if err := checkCRL(crl, chains[0]); err != nil {
			return err
		}
	}
	if cs.NegotiatedProtocol != ALPN {
		return fmt.Errorf("%w: protocol %q, want %q", ErrPeer, cs.NegotiatedProtocol, ALPN)
	}
	return nil
}

// checkCRL refuses chain[0] when crl, signed by its issuer in the verified chain, lists it.
func checkCRL(crl *x509.RevocationList, chain []*x509.Certificate) error {
	if len(chain) < 2 || string(chain[0].RawIssuer) != string(crl.RawIssuer) {
		return fmt.Errorf("%w: the CRL is not of the certificate's issuer", ErrPeer)
	}
	if err := crl.CheckSignatureFrom(chain[1]); err != nil {
		return fmt.Errorf("%w: the CRL is not signed by the certificate's issuer: %v", ErrPeer, err)
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(chain[0].SerialNumber) == 0 {
			return fmt.Errorf("%w: certificate %s is revoked", ErrPeer, wire.FormatSerial(chain[0].SerialNumber))
		}
	}
	return nil
}

func now(f func() time.Time) time.Time {
	if f == nil {
		return time.Now()
	}
	return f()
}

// verifyChain checks chain[0] against roots (the rest as intermediates) for clientAuth:
// both device and user certificates carry it.
func verifyChain(chain []*x509.Certificate, roots *x509.CertPool, at time.Time, revoked func(*x509.Certificate) bool) (*x509.Certificate, error) {
	verified, err := verifiedChain(chain, roots, at, revoked)
	if err != nil {
		return nil, err
	}
	return verified[0], nil
}

// verifiedChain is verifyChain returning the verified chain, leaf first, root last.
func verifiedChain(chain []*x509.Certificate, roots *x509.CertPool, at time.Time, revoked func(*x509.Certificate) bool) ([]*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrPeer)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPeer, err)
	}
	if revoked != nil {
		for _, c := range chain {
			if revoked(c) {
				return nil, fmt.Errorf("%w: certificate %s is revoked", ErrPeer, wire.FormatSerial(c.SerialNumber))
			}
		}
	}
	return chains[0], nil
}

// WritePreamble starts a direct connection for ticket id.
func WritePreamble(w io.Writer, ticketID string) error {
	_, err := io.WriteString(w, DirectPreamble+ticketID+"\n")
	return err
}

// ReadPreamble reads the preamble of a direct connection byte by byte (nothing of the TLS
// that follows is consumed) and returns the ticket id.
func ReadPreamble(r io.Reader) (string, error) {
	var b [1]byte
	line := make([]byte, 0, MaxPreamble)
	for len(line) < MaxPreamble {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			s := string(line)
			if len(s) != len(DirectPreamble)+32 || s[:len(DirectPreamble)] != DirectPreamble {
				return "", fmt.Errorf("%w: bad session preamble", ErrPeer)
			}
			id := s[len(DirectPreamble):]
			for _, c := range id {
				if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
					return "", fmt.Errorf("%w: bad session preamble", ErrPeer)
				}
			}
			return id, nil
		}
		line = append(line, b[0])
	}
	return "", fmt.Errorf("%w: session preamble too long", ErrPeer)
}
