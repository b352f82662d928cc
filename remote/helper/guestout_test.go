package helper

import (
	"bytes"
	"testing"
)

func guestFiltered(chunks ...string) string {
	var buf bytes.Buffer
	g := NewGuestOutput(&buf)
	for _, c := range chunks {
		if n, err := g.Write([]byte(c)); err != nil || n != len(c) {
			panic("write")
		}
	}
	return buf.String()
}

func TestGuestOutput(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []string
		want string
	}{
		{"text", []string{"hello\r\nwörld\t€"}, "hello\r\nwörld\t€"},
		{"colours and cursor pass", []string{"\x1b[1;31mred\x1b[0m\x1b[2J\x1b[H\x1b[?25l"}, "\x1b[1;31mred\x1b[0m\x1b[2J\x1b[H\x1b[?25l"},
		{"OSC 52 clipboard dropped (BEL)", []string{"a\x1b]52;c;ZXZpbA==\x07b"}, "ab"},
		{"OSC title dropped (ST)", []string{"a\x1b]0;title\x1b\\b"}, "ab"},
		{"OSC split across writes", []string{"a\x1b", "]8;;http://x", "\x07li", "nk\x1b]8;;\x1b", "\\b"}, "alinkb"},
		{"DCS dropped", []string{"a\x1bP+q544e\x1b\\b"}, "ab"},
		{"APC PM SOS dropped", []string{"\x1b_x\x1b\\\x1b^y\x1b\\\x1bXz\x1b\\ok"}, "ok"},
		{"window ops dropped", []string{"a\x1b[21tb\x1b[8;1;1tc"}, "abc"},
		{"C1 in UTF-8 dropped", []string{"a\xc2\x9d0;x\xc2\x9cb\xc2\x9b6n"}, "a0;xb6n"},
		{"C1 split", []string{"a\xc2", "\x9bb"}, "ab"},
		{"Latin-1 supplement kept", []string{"\xc2\xa9 caf\xc3\xa9"}, "© café"},
		{"lone C2 dropped", []string{"\xc2\x1b[1m\xc2\x1b]x\x07\x80"}, "\x1b[1m\x80"},
		{"ESC charset passes", []string{"\x1b(B\x1b7\x1b8"}, "\x1b(B\x1b7\x1b8"},
		{"CAN cancels a string", []string{"\x1b]0;t\x18ok"}, "ok"},
		{"long CSI dropped", []string{"\x1b[" + string(bytes.Repeat([]byte("1;"), 100)) + "mX"}, "X"},
		{"CSI cancelled by ESC", []string{"\x1b[1\x1b]0;x\x07ok"}, "ok"},
	} {
		if got := guestFiltered(c.in...); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// FuzzGuestOutput: whatever the guest sends, nothing of an OSC, DCS, APC, PM or SOS
// introducer or a UTF-8 C1 control reaches the helper's terminal, and splitting the stream
// anywhere gives the same output.
func FuzzGuestOutput(f *testing.F) {
	f.Add([]byte("\x1b]52;c;x\x07\x1b[31mhi"), 3)
	f.Add([]byte("\xc2\x9d\x1bP\x1b\\"), 1)
	f.Fuzz(func(t *testing.T, in []byte, cut int) {
		whole := guestFiltered(string(in))
		if cut < 0 {
			cut = -cut
		}
		cut %= len(in) + 1
		if split := guestFiltered(string(in[:cut]), string(in[cut:])); split != whole {
			t.Fatalf("split at %d: %q, whole %q", cut, split, whole)
		}
		for _, bad := range []string{"\x1b]", "\x1bP", "\x1b_", "\x1b^", "\x1bX"} {
			if bytes.Contains([]byte(whole), []byte(bad)) {
				t.Fatalf("%q passed: %q", bad, whole)
			}
		}
		for i := 0; i+1 < len(whole); i++ {
			if whole[i] == 0xc2 && whole[i+1] >= 0x80 && whole[i+1] <= 0x9f {
				t.Fatalf("a C1 control passed: %q", whole)
			}
		}
	})
}
