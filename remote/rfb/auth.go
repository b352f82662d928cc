package rfb

import (
	"crypto/des"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"io"
	"math/bits"
)

// VNC Authentication (RFC 6143 §7.2.2): the server sends a 16-byte challenge, the client
// answers with it encrypted by DES (two ECB blocks) under the password — at most 8 bytes,
// zero-padded, each byte bit-reversed (the quirk of the original VNC's DES code).

// ChallengeSize is the length of a VNC Authentication challenge and its response.
const ChallengeSize = 16

// ErrAuth is the error of a wrong VNC password.
var ErrAuth = errors.New("rfb: VNC authentication failed")

// passwordAlphabet avoids letters that read alike (0/O, 1/l/I).
const passwordAlphabet = "abcdefghjkmnpqrstuvwxyz23456789"

// NewPassword returns a random 8-character VNC password (VNC uses only 8 bytes) from
// rand (crypto/rand when nil): about 39 bits, for a port that takes one attempt.
func NewPassword(r io.Reader) (string, error) {
	if r == nil {
		r = rand.Reader
	}
	p := make([]byte, 8)
	for i := range p {
		var b [1]byte
		for {
			if _, err := io.ReadFull(r, b[:]); err != nil {
				return "", err
			}
			// Reject the top of the byte range so every letter is equally likely.
			if int(b[0]) < 256-256%len(passwordAlphabet) {
				break
			}
		}
		p[i] = passwordAlphabet[int(b[0])%len(passwordAlphabet)]
	}
	return string(p), nil
}

// EncryptChallenge returns the response to challenge for password.
func EncryptChallenge(password string, challenge [ChallengeSize]byte) [ChallengeSize]byte {
	var key [8]byte
	copy(key[:], password)
	for i, b := range key {
		key[i] = bits.Reverse8(b)
	}
	c, _ := des.NewCipher(key[:]) // an 8-byte key never fails
	var out [ChallengeSize]byte
	c.Encrypt(out[:8], challenge[:8])
	c.Encrypt(out[8:], challenge[8:])
	return out
}

// checkResponse tells whether response answers challenge for password, in constant time.
func checkResponse(password string, challenge, response [ChallengeSize]byte) bool {
	want := EncryptChallenge(password, challenge)
	return subtle.ConstantTimeCompare(want[:], response[:]) == 1
}
