package guestcode

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestNewCodes(t *testing.T) {
	seen := map[string]bool{}
	counts := map[rune]int{}
	for range 2000 {
		c, err := New(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if len(c) != Length+1 || c[Length/2] != '-' {
			t.Fatalf("code %q: want XXXXX-XXXXX", c)
		}
		n, err := Normalize(c)
		if err != nil {
			t.Fatalf("Normalize(%q): %v", c, err)
		}
		if seen[n] {
			t.Fatalf("code %q twice", c)
		}
		seen[n] = true
		for _, r := range n {
			counts[r]++
		}
	}
	if len(counts) != len(Alphabet) {
		t.Errorf("%d distinct characters in 2000 codes, want all %d", len(counts), len(Alphabet))
	}
	// A reader that runs dry is an error, not a short code.
	if _, err := New(bytes.NewReader([]byte{1, 2, 3})); err == nil {
		t.Error("New with 3 random bytes succeeded")
	}
	// Bytes past the last multiple of the alphabet's size are drawn again (no bias).
	c, err := New(bytes.NewReader(append(bytes.Repeat([]byte{255}, 50), make([]byte, 10)...)))
	if err != nil || c != "22222-22222" {
		t.Errorf("New skipping 255s = %q, %v", c, err)
	}
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"ABCDE-FGHJK", "ABCDEFGHJK", true},
		{"abcde fghjk", "ABCDEFGHJK", true},
		{" abcdefghjk ", "ABCDEFGHJK", true},
		{"ABCDE-FGHJ", "", false},   // short
		{"ABCDE-FGHJKM", "", false}, // long
		{"ABCDE-FGHJ0", "", false},  // 0 is not in the alphabet
		{"ABCDE-FGHJO", "", false},  // nor O
		{"ABCDE-FGHJ1", "", false},  // nor 1
		{"ABCDE-FGHJé", "", false},  // nor anything else
		{strings.Repeat("-", 100), "", false},
		{"", "", false},
	} {
		got, err := Normalize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Normalize(%q) = %q, %v", tc.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("Normalize(%q): %v is not ErrInvalid", tc.in, err)
		}
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"ABCDE-FGHJK", "abcde fghjk", "", "ÀÀÀÀÀ-ÀÀÀÀÀ", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Normalize(s)
		if err != nil {
			return
		}
		if len(n) != Length {
			t.Fatalf("Normalize(%q) = %q", s, n)
		}
		for _, r := range n {
			if !strings.ContainsRune(Alphabet, r) {
				t.Fatalf("Normalize(%q) = %q has %q", s, n, r)
			}
		}
		if again, err := Normalize(n); err != nil || again != n {
			t.Fatalf("Normalize is not idempotent on %q", n)
		}
	})
}

func TestHashIsKeyedToCodes(t *testing.T) {
	if Hash("ABCDEFGHJK") == Hash("ABCDEFGHJM") || len(Hash("ABCDEFGHJK")) != 64 {
		t.Error("hashes")
	}
}

func TestOutcomeOf(t *testing.T) {
	for err, want := range map[error]string{nil: OutcomeIssued, ErrExpired: OutcomeExpired, ErrUsed: OutcomeUsed,
		ErrRateLimited: OutcomeRateLimited, ErrInvalid: OutcomeInvalid} {
		if got := OutcomeOf(err); got != want {
			t.Errorf("OutcomeOf(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestAddressKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:443":                "192.0.2.1",
		"[::ffff:192.0.2.1]:443":       "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:1":     "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:65535": "2001:db8:1:2::/64",
		"garbage":                      "garbage",
	} {
		if got := AddressKey(in); got != want {
			t.Errorf("AddressKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLimiterKeepsItsMapsBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := NewLimiter(Limits{PerAddress: rate.Every(time.Hour), AddrBurst: 1, PerCode: rate.Inf, Global: rate.Inf}, func() time.Time { return now })
	for i := range maxKeys + 10 {
		l.AllowAddress(string(rune(i)) + ":1")
	}
	if len(l.addrs) > maxKeys {
		t.Errorf("%d addresses remembered, want at most %d", len(l.addrs), maxKeys)
	}
}
