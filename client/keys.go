package client

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
)

// KeyType names the algorithm and size of the device key.
type KeyType string

// The key types the site's CA accepts. P256 is the default.
const (
	P256    KeyType = "p256"
	P384    KeyType = "p384"
	RSA2048 KeyType = "rsa2048"
	RSA3072 KeyType = "rsa3072"
)

// ParseKeyType checks a key type name; the empty string is P256.
func ParseKeyType(s string) (KeyType, error) {
	switch k := KeyType(strings.ToLower(strings.TrimSpace(s))); k {
	case "":
		return P256, nil
	case P256, P384, RSA2048, RSA3072:
		return k, nil
	}
	return "", fmt.Errorf("key type %q: must be one of p256, p384, rsa2048, rsa3072", s)
}

// generate makes a new private key of this type.
func (k KeyType) generate(rnd io.Reader) (crypto.Signer, error) {
	switch k {
	case P256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rnd)
	case P384:
		return ecdsa.GenerateKey(elliptic.P384(), rnd)
	case RSA2048:
		return rsa.GenerateKey(rnd, 2048)
	case RSA3072:
		return rsa.GenerateKey(rnd, 3072)
	}
	return nil, fmt.Errorf("key type %q: must be one of p256, p384, rsa2048, rsa3072", string(k))
}

// keyTypeOf tells the type of an existing key, so a rekey keeps the algorithm.
func keyTypeOf(pub crypto.PublicKey) KeyType {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if p.Curve == elliptic.P384() {
			return P384
		}
		return P256
	case *rsa.PublicKey:
		if p.N.BitLen() > 2048 {
			return RSA3072
		}
		return RSA2048
	}
	return P256
}

// encodeKey returns the key as a PEM "PRIVATE KEY" (PKCS#8) block.
func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// decodeKey parses a PEM "PRIVATE KEY" (PKCS#8) block.
func decodeKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PRIVATE KEY (PKCS#8) block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

// makeCSR makes the device's certificate request: CN = device name and at most one DNS
// name, the device's FQDN. The CA adds the device id; nothing else is asked for.
func makeCSR(rnd io.Reader, key crypto.Signer, name, fqdn string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}
	if fqdn != "" {
		tmpl.DNSNames = []string{fqdn}
	}
	der, err := x509.CreateCertificateRequest(rnd, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("making the certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// encodeCerts returns certificates as concatenated PEM blocks.
func encodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// parseCerts parses every CERTIFICATE block of a PEM bundle; there must be at least one.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
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

// samePublicKey reports whether a certificate carries the public key of key.
func samePublicKey(c *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}
