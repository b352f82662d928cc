// Package manifesttest owns the signed-manifest fixtures of tests: a throw-away root (or
// an issuing CA the test already has) and a content-signer certificate of a site as the
// site's CA issues it (EKU codeSigning only, URI urn:ibcm:site:<code>:role:content, CN
// "content-signer"), manifests signed with it, and other leaves for negative cases. It
// imports only the standard library, internal/wire and dp/manifest.
package manifesttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// CA is a certificate authority of site SiteCode and the content signer it issued.
type CA struct {
	SiteCode string
	Root     *x509.Certificate // the self-signed root of New, or the issuer From was given
	RootKey  crypto.Signer
	Pool     *x509.CertPool // holds Root: the roots of a manifest.Trust
	Key      crypto.Signer  // the content signer's key
	Cert     *x509.Certificate
	Chain    []*x509.Certificate // what a signature carries: Cert, then the issuer when it is not the root
}

// NewKey returns a new P-256 key.
func NewKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// New makes a root (valid from two days ago for ten years) and a content signer of
// siteCode valid from an hour ago to an hour from now.
func New(t testing.TB, siteCode string) *CA {
	t.Helper()
	key := NewKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return from(t, siteCode, root, key, false)
}

// From makes a content signer of siteCode that issuer (an issuing CA below the test's
// root, such as ca/catest's) signs; signatures carry issuer after the signer.
func From(t testing.TB, siteCode string, issuer *x509.Certificate, issuerKey crypto.Signer) *CA {
	t.Helper()
	return from(t, siteCode, issuer, issuerKey, true)
}

func from(t testing.TB, siteCode string, root *x509.Certificate, key crypto.Signer, intermediate bool) *CA {
	t.Helper()
	c := &CA{SiteCode: siteCode, Root: root, RootKey: key, Pool: x509.NewCertPool()}
	c.Pool.AddCert(root)
	c.Key = NewKey(t)
	now := time.Now()
	c.Cert = c.Leaf(t, c.Key, "urn:ibcm:site:"+siteCode+":role:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour))
	c.Chain = []*x509.Certificate{c.Cert}
	if intermediate {
		c.Chain = append(c.Chain, root)
	}
	return c
}

// Trust is what verifies the manifests c signs: Pool and SiteCode.
func (c *CA) Trust() manifest.Trust { return manifest.Trust{Roots: c.Pool, SiteCode: c.SiteCode} }

// Leaf issues a certificate for key naming uri with the extended key usage eku, valid
// from notBefore to notAfter, common name "content-signer": with another role, another
// EKU or another time it is a leaf a verifier must refuse.
func (c *CA) Leaf(t testing.TB, key crypto.Signer, uri string, eku x509.ExtKeyUsage, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: "content-signer"}, URIs: []*url.URL{u},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Root, key.Public(), c.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// Sign signs m with the content signer (manifest.Sign, the chain Chain).
func (c *CA) Sign(t testing.TB, m *wire.Manifest) *wire.SignedManifest {
	t.Helper()
	sm, err := manifest.Sign(m, c.Key, c.Chain)
	if err != nil {
		t.Fatal(err)
	}
	return sm
}

// Signed is Sign's result as a DP serves it (JSON) and the pin a deployment names (the
// SHA-256 of the signed manifest bytes).
func (c *CA) Signed(t testing.TB, m *wire.Manifest) (signed []byte, pin string) {
	t.Helper()
	sm := c.Sign(t, m)
	b, err := json.Marshal(sm)
	if err != nil {
		t.Fatal(err)
	}
	return b, manifest.Hash(sm.Manifest)
}
