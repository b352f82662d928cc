package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/peertest"
)

func hexInt(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 16)
	if !ok {
		panic(s)
	}
	return n
}

func TestFormatSerial(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   *big.Int
		want string
	}{
		{"nil", nil, ""},
		{"zero", big.NewInt(0), "00"},
		{"one", big.NewInt(1), "01"},
		{"leading zero nibble", hexInt("a"), "0A"},
		{"leading zero nibble, longer", hexInt("123"), "0123"},
		{"high bit", hexInt("80"), "80"},
		{"16 bytes", hexInt("5a0f3c9e2b1d4e6f7a8b9c0d1e2f3a4b"), "5A0F3C9E2B1D4E6F7A8B9C0D1E2F3A4B"},
		{"16 bytes, short first byte", hexInt("0f0f3c9e2b1d4e6f7a8b9c0d1e2f3a4b"), "0F0F3C9E2B1D4E6F7A8B9C0D1E2F3A4B"},
		{"negative", big.NewInt(-10), "-0A"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FormatSerial(tc.in); got != tc.want {
				t.Errorf("FormatSerial = %q, want %q", got, tc.want)
			}
		})
	}
	if got := FormatDecimalSerial("10"); got != "0A" {
		t.Errorf("FormatDecimalSerial(10) = %q", got)
	}
	if got := FormatDecimalSerial("not-a-number"); got != "not-a-number" {
		t.Errorf("FormatDecimalSerial(junk) = %q", got)
	}
}

func TestParseSerial(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // FormatSerial of the result; "" = refused
	}{
		{"openssl form", "5A0F3C9E2B1D4E6F7A8B9C0D1E2F3A4B", "5A0F3C9E2B1D4E6F7A8B9C0D1E2F3A4B"},
		{"openssl output line", "serial=0A1B", "0A1B"},
		{"lower case", "5a0f", "5A0F"},
		{"0x", "0x5A0F", "5A0F"},
		{"0X", "0X5a0f", "5A0F"},
		{"colons", "5a:0f:3c", "5A0F3C"},
		{"leading zero nibble kept or not", "A", "0A"},
		{"digits only are hex", "1234", "1234"},
		{"spaces around", "  0A1B\n", "0A1B"},
		{"empty", "", ""},
		{"0x alone", "0x", ""},
		{"not hex", "5G", ""},
		{"decimal with a sign", "-10", ""},
		{"zero", "00", ""},
		{"odd colon groups", "5:0f", ""},
		{"trailing colon", "5a:", ""},
		{"too long", strings.Repeat("A", MaxSerialLen+1), ""},
		{"inner space", "5A 0F", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := ParseSerial(tc.in)
			if tc.want == "" {
				if err == nil || !errors.Is(err, ErrBadSerial) {
					t.Fatalf("ParseSerial(%q) = %v, %v; want ErrBadSerial", tc.in, n, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSerial(%q): %v", tc.in, err)
			}
			if got := FormatSerial(n); got != tc.want {
				t.Errorf("ParseSerial(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
	if dec, err := DecimalSerial("0A"); err != nil || dec != "10" {
		t.Errorf("DecimalSerial(0A) = %q, %v", dec, err)
	}
}

// FormatSerial agrees with what openssl prints for certificates with awkward serials, and
// ParseSerial reads openssl's output back to the same number.
func TestSerialAgreesWithOpenSSL(t *testing.T) {
	openssl := peertest.Need(t, "openssl")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range []string{"1", "a", "f", "10", "7f", "80", "ff", "100", "abc", "0123456789abcdef",
		"0f0f3c9e2b1d4e6f7a8b9c0d1e2f3a4b", "5a0f3c9e2b1d4e6f7a8b9c0d1e2f3a4b", "7fffffffffffffffffffffffffffffffffffffff"} {
		n := hexInt(sn)
		tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: "serial " + sn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "c.pem")
		if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "x509", "-in", file, "-noout", "-serial").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
		line := strings.TrimSpace(string(out))
		if want := "serial=" + FormatSerial(n); line != want {
			t.Errorf("serial %s: openssl prints %q, FormatSerial gives %q", sn, line, want)
		}
		if back, err := ParseSerial(line); err != nil || back.Cmp(n) != 0 {
			t.Errorf("ParseSerial(%q) = %v, %v; want %s", line, back, err, sn)
		}
	}
}
