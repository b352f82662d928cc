// Package recording seals a session recording (asciicast v2) to the site's audit key with
// HPKE (RFC 9180: DHKEM(X25519), HKDF-SHA256, ChaCha20-Poly1305), so that the device that
// writes it, the MP that stores it and anyone who copies it cannot read it; only the audit
// key's holder (the MP answering a ReadAudit user) opens it. It imports only the standard
// library, so the agent links it.
package recording

import (
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"errors"
	"fmt"
)

// MaxSealed bounds a sealed recording as uploaded.
const MaxSealed = 64 << 20

// info binds a sealed recording to its session: one session's recording cannot be passed
// off as another's.
func info(session string) []byte { return []byte("ibcm recording v1 " + session) }

func suite() (hpke.KEM, hpke.KDF, hpke.AEAD) {
	return hpke.DHKEM(ecdh.X25519()), hpke.HKDFSHA256(), hpke.ChaCha20Poly1305()
}

// NewKey makes an audit key pair; the public key is returned in the form policy carries.
func NewKey() (priv []byte, pub string, err error) {
	k, err := ecdh.X25519().GenerateKey(nil)
	if err != nil {
		return nil, "", err
	}
	return k.Bytes(), base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()), nil
}

// PublicOf returns the public key of priv in the form policy carries.
func PublicOf(priv []byte) (string, error) {
	k, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("audit key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()), nil
}

// Seal encrypts a recording of session to the audit public key (base64, as policy carries it).
func Seal(pub, session string, plaintext []byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(pub)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	kem, kdf, aead := suite()
	pk, err := kem.NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	out, err := hpke.Seal(pk, kdf, aead, info(session), plaintext)
	if err != nil {
		return nil, err
	}
	if len(out) > MaxSealed {
		return nil, errors.New("recording too large")
	}
	return out, nil
}

// Open decrypts a sealed recording of session with the audit private key.
func Open(priv []byte, session string, sealed []byte) ([]byte, error) {
	kem, kdf, aead := suite()
	k, err := kem.NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	return hpke.Open(k, kdf, aead, info(session), sealed)
}
