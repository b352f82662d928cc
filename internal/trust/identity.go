package trust

import (
	"crypto/x509"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// The identity a site certificate names is read in internal/wire, so that the agent (which
// must not link this package) reads it the same way; these names keep the servers' code
// as it was.
const (
	KindDevice = wire.KindDevice
	KindServer = wire.KindServer
	KindUser   = wire.KindUser
)

// Identity is who a site certificate says its holder is (wire.Identity).
type Identity = wire.Identity

// Identify reads the identity from a certificate's urn:ibcm URI (wire.Identify).
func Identify(c *x509.Certificate) Identity { return wire.Identify(c) }

// PublicKeyHash is the hex SHA-256 of a certificate's SubjectPublicKeyInfo.
func PublicKeyHash(c *x509.Certificate) string { return wire.PublicKeyHash(c) }
