package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"
)

// Validity of the CA certificates made by NewHierarchy.
const (
	RootValidity    = 10 * 365 * 24 * time.Hour
	IssuingValidity = 5 * 365 * 24 * time.Hour
)

// Hierarchy is the site's CA: a root and the issuing CA that signs every leaf. RootKey is
// nil when the root key is kept offline.
type Hierarchy struct {
	Root       *x509.Certificate
	RootKey    crypto.Signer
	Issuing    *x509.Certificate
	IssuingKey crypto.Signer
}

// NewHierarchy makes a new root CA (10 years) and issuing CA (5 years) for a site.
func NewHierarchy(siteCode string, kt KeyType, now time.Time, rnd io.Reader) (*Hierarchy, error) {
	rootKey, err := kt.Generate(rnd)
	if err != nil {
		return nil, fmt.Errorf("making root key: %w", err)
	}
	issKey, err := kt.Generate(rnd)
	if err != nil {
		return nil, fmt.Errorf("making issuing key: %w", err)
	}
	org := []string{"ibcm site " + siteCode}
	rootTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(rnd),
		Subject:               pkix.Name{CommonName: "ibcm " + siteCode + " Root CA", Organization: org},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(RootValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	root, err := createCert(rnd, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("making root CA: %w", err)
	}
	issTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(rnd),
		Subject:               pkix.Name{CommonName: "ibcm " + siteCode + " Issuing CA 1", Organization: org},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(IssuingValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	iss, err := createCert(rnd, issTmpl, root, issKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("making issuing CA: %w", err)
	}
	return &Hierarchy{Root: root, RootKey: rootKey, Issuing: iss, IssuingKey: issKey}, nil
}

func createCert(rnd io.Reader, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rnd, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// randomSerial returns a positive 128-bit random serial number.
func randomSerial(rnd io.Reader) *big.Int {
	if rnd == nil {
		rnd = rand.Reader
	}
	b := make([]byte, 16)
	if _, err := io.ReadFull(rnd, b); err != nil {
		panic("ca: reading randomness: " + err.Error())
	}
	b[0] &= 0x7f
	b[0] |= 0x40 // keep it 16 bytes long when printed
	return new(big.Int).SetBytes(b)
}

// IssuerID names a CA certificate in URLs (/crl/<id>.crl, /ca/<id>.crt): the first 8 bytes
// of its subject key identifier in hex.
func IssuerID(c *x509.Certificate) string {
	id := c.SubjectKeyId
	if len(id) > 8 {
		id = id[:8]
	}
	return hex.EncodeToString(id)
}

func pemEncode(blocks ...*pem.Block) []byte {
	var buf bytes.Buffer
	for _, b := range blocks {
		_ = pem.Encode(&buf, b)
	}
	return buf.Bytes()
}

// EncodeCerts returns the certificates as concatenated PEM blocks.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	blocks := make([]*pem.Block, len(certs))
	for i, c := range certs {
		blocks[i] = &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}
	}
	return pemEncode(blocks...)
}

// ParseCerts parses every CERTIFICATE block of a PEM bundle; there must be at least one.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}

// pemBlock returns the bytes of the first PEM block of one of the given types, or nil.
func pemBlock(data []byte, types ...string) []byte {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil
		}
		for _, t := range types {
			if b.Type == t {
				return b.Bytes
			}
		}
	}
}

// Fingerprint returns the hex SHA-256 of a certificate's DER, as
// `openssl x509 -outform DER | sha256sum` prints it.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
