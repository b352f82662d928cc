package wire

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// A certificate serial number has one written form in everything the site and the agent
// show, log and send: the one `openssl x509 -noout -serial` prints after "serial=", which
// is upper-case hex, two digits per byte, no colons (a serial with a leading zero nibble
// keeps it: 0A, 0123; zero is 00). The site's database keeps serials in decimal; they are
// converted where they leave it.

// MaxSerialLen bounds a serial as typed or sent: 20 bytes (RFC 5280) in hex with colons,
// with room for a prefix.
const MaxSerialLen = 80

// FormatSerial writes sn as openssl prints it: upper-case hex of even length.
func FormatSerial(sn *big.Int) string {
	if sn == nil {
		return ""
	}
	s := strings.ToUpper(new(big.Int).Abs(sn).Text(16))
	if len(s)%2 == 1 {
		s = "0" + s
	}
	if sn.Sign() < 0 {
		return "-" + s
	}
	return s
}

// FormatDecimalSerial writes a serial stored in decimal as FormatSerial does. Something
// that is not a decimal number is returned as it is.
func FormatDecimalSerial(dec string) string {
	n, ok := new(big.Int).SetString(dec, 10)
	if !ok {
		return dec
	}
	return FormatSerial(n)
}

// ErrBadSerial is returned by ParseSerial for input that is not a serial in hex.
var ErrBadSerial = errors.New("not a certificate serial: want hex as openssl prints it (e.g. 5A0F3C9E), optionally with colons or 0x")

// ParseSerial reads a serial as a person or a peer writes it: hex as openssl prints it
// (FormatSerial), in either case, optionally after "serial=" or "0x" and with colons
// between the bytes (as openssl x509 -text prints it). Decimal is not accepted: "1234" is
// the hex serial 0x1234. The serial must be positive (RFC 5280).
func ParseSerial(s string) (*big.Int, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxSerialLen {
		return nil, fmt.Errorf("%w: longer than %d characters", ErrBadSerial, MaxSerialLen)
	}
	s = strings.TrimPrefix(s, "serial=")
	if len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		s = s[2:]
	}
	if strings.Contains(s, ":") {
		parts := strings.Split(s, ":")
		for _, p := range parts {
			if len(p) != 2 {
				return nil, fmt.Errorf("%w: with colons, every byte has two digits", ErrBadSerial)
			}
		}
		s = strings.Join(parts, "")
	}
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrBadSerial)
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F') {
			return nil, fmt.Errorf("%w: %q is not a hex digit", ErrBadSerial, r)
		}
	}
	n, _ := new(big.Int).SetString(s, 16)
	if n.Sign() <= 0 {
		return nil, fmt.Errorf("%w: a serial is positive", ErrBadSerial)
	}
	return n, nil
}

// DecimalSerial turns a serial in ParseSerial's forms into the decimal the database keys
// certificates by.
func DecimalSerial(s string) (string, error) {
	n, err := ParseSerial(s)
	if err != nil {
		return "", err
	}
	return n.String(), nil
}
