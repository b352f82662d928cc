package wire

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"
)

// Kinds of identity a site certificate names in its URI SAN.
const (
	KindDevice = "device"      // urn:ibcm:device:<id>
	KindServer = "site-server" // urn:ibcm:site:<code>:role:<role>
	KindUser   = "user"        // urn:ibcm:user:<name>
	// KindGuest is the sharer of an unenrolled device: urn:ibcm:guest:<session>, the guest
	// certificate a security code was exchanged for (guest.go). Its ID is the session.
	KindGuest = "guest"
)

// Identity is who a site certificate says its holder is.
type Identity struct {
	Kind string // KindDevice, KindServer, KindUser, KindGuest, or "" for none
	ID   string // device id, user name, role, or a guest's session
	Site string // site code (site-server only)
}

// Identify reads the identity from a certificate's urn:ibcm URI. It says who the
// certificate names, not that it is trusted: verify the chain first.
func Identify(c *x509.Certificate) Identity {
	for _, u := range c.URIs {
		s := u.String()
		switch {
		case strings.HasPrefix(s, "urn:ibcm:device:"):
			return Identity{Kind: KindDevice, ID: strings.TrimPrefix(s, "urn:ibcm:device:")}
		case strings.HasPrefix(s, "urn:ibcm:user:"):
			return Identity{Kind: KindUser, ID: strings.TrimPrefix(s, "urn:ibcm:user:")}
		case strings.HasPrefix(s, "urn:ibcm:guest:"):
			return Identity{Kind: KindGuest, ID: strings.TrimPrefix(s, "urn:ibcm:guest:")}
		case strings.HasPrefix(s, "urn:ibcm:site:"):
			rest := strings.TrimPrefix(s, "urn:ibcm:site:")
			if code, role, ok := strings.Cut(rest, ":role:"); ok {
				return Identity{Kind: KindServer, ID: role, Site: code}
			}
		}
	}
	return Identity{}
}

// PublicKeyHash is the hex SHA-256 of a certificate's SubjectPublicKeyInfo.
func PublicKeyHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}
