package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"io"
	"strings"

	"go.step.sm/crypto/pemutil"
)

// KeyType names a key algorithm and size the CA makes and accepts.
type KeyType string

// The key types of the site.
const (
	P256    KeyType = "p256"
	P384    KeyType = "p384"
	RSA2048 KeyType = "rsa2048"
	RSA3072 KeyType = "rsa3072"
)

// ParseKeyType checks a key type name.
func ParseKeyType(s string) (KeyType, error) {
	switch k := KeyType(strings.ToLower(s)); k {
	case P256, P384, RSA2048, RSA3072:
		return k, nil
	}
	return "", fmt.Errorf("key type %q: must be one of p256, p384, rsa2048, rsa3072", s)
}

// Generate makes a new private key of this type.
func (k KeyType) Generate(rand io.Reader) (crypto.Signer, error) {
	switch k {
	case P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand)
	case P384:
		return ecdsa.GenerateKey(elliptic.P384(), rand)
	case RSA2048:
		return rsa.GenerateKey(rand, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand, 3072)
	}
	return nil, fmt.Errorf("unknown key type %q", k)
}

// CheckPublicKey refuses keys the site does not accept: RSA below 2048 bits (or above 8192),
// elliptic curves other than P-256 and P-384, and every other algorithm.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Errorf("%w: RSA key of %d bits (2048 to 8192 accepted)", ErrWeakKey, n)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return fmt.Errorf("%w: curve %s (P-256 and P-384 accepted)", ErrWeakKey, k.Curve.Params().Name)
	}
	return fmt.Errorf("%w: key type %T (ECDSA P-256/P-384 and RSA accepted)", ErrWeakKey, pub)
}

// EncryptKey returns key as an encrypted PKCS#8 PEM block (PBES2: PBKDF2 + AES-256-CBC).
func EncryptKey(key crypto.Signer, password []byte) ([]byte, error) {
	if len(password) == 0 {
		return nil, fmt.Errorf("encrypting key: empty password")
	}
	block, err := pemutil.Serialize(key, pemutil.WithPassword(password), pemutil.WithPKCS8(true))
	if err != nil {
		return nil, fmt.Errorf("encrypting key: %w", err)
	}
	return pemEncode(block), nil
}

// DecryptKey parses an encrypted PEM private key made by EncryptKey.
func DecryptKey(data, password []byte) (crypto.Signer, error) {
	k, err := pemutil.ParseKey(data, pemutil.WithPassword(password))
	if err != nil {
		return nil, fmt.Errorf("decrypting key (wrong password?): %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("decrypting key: %T is not a signing key", k)
	}
	return s, nil
}
