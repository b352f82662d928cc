package helper

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
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
		{"lone C2 dropped", []string{"\xc2\x1b[1m\xc2\x1b]x\x07\x80"}, "\x1b[1m"},
		{"ESC charset passes", []string{"\x1b(B\x1b7\x1b8"}, "\x1b(B\x1b7\x1b8"},
		{"CAN cancels a string", []string{"\x1b]0;t\x18ok"}, "ok"},
		{"long CSI dropped", []string{"\x1b[" + string(bytes.Repeat([]byte("1;"), 100)) + "mX"}, "X"},
		{"CSI cancelled by ESC", []string{"\x1b[1\x1b]0;x\x07ok"}, "ok"},
		// An 8-bit C1 byte is CSI, OSC, DCS in a terminal not decoding UTF-8, and an
		// overlong or invalid sequence is one in a lax decoder: only valid UTF-8 passes.
		{"raw 8-bit C1 dropped", []string{"a\x9d52;c;ZXZpbA==\x07b\x9b6nc\x90$qm\x9c"}, "a52;c;ZXZpbA==\x07b6nc$qm"},
		{"overlong ESC and C1 dropped", []string{"a\xc0\x9b]0;x\x07\xe0\x82\x9db"}, "a]0;x\x07b"},
		{"UTF-8 split", []string{"\xe2\x82", "\xac\xf0\x9f", "\x98\x80"}, "€😀"},
		{"surrogate dropped", []string{"a\xed\xa0\x80b"}, "ab"},
		// ESC % @ leaves UTF-8 for ISO 2022 (xterm), where 8-bit C1 bytes are controls;
		// ESC SP F/G, ESC # and the like change the terminal, not the picture.
		{"ESC % and ESC SP dropped", []string{"a\x1b%@b\x1b%Gc\x1b Gd\x1b Fe"}, "abcde"},
		{"ESC ( charsets pass", []string{"\x1b(0q\x1b(B\x1b)0"}, "\x1b(0q\x1b(B\x1b)0"},
		// Requests the terminal answers by typing into its input: into the session while it
		// lasts, into the helper's shell when the answer comes after it.
		{"answer requests dropped", []string{"a\x1b[6nb\x1b[5nc\x1b[cd\x1b[>ce\x1b[=cf\x1b[?2004$pg\x1b[>qh\x1b[?uj\x1b[1;1;1;1;1;1*yk\x1b[xl\x1b[5im\x1b[?6nn"}, "abcdefghjklmn"},
		// GNU screen and tmux read ESC k … ST as a window title, like an OSC.
		{"screen title dropped", []string{"a\x1bktitle\x1b\\b"}, "ab"},
		{"ENQ answerback dropped", []string{"a\x05b"}, "ab"},
		{"cursor style passes", []string{"\x1b[2 q\x1b[?2004h\x1b[10;20r"}, "\x1b[2 q\x1b[?2004h\x1b[10;20r"},
	} {
		if got := guestFiltered(c.in...); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// answerRequest matches the CSI requests a terminal answers (DSR, DA, DECRQM, XTVERSION,
// window reports).
var answerRequest = regexp.MustCompile(`\x1b\[[\x30-\x3f]*[\x20-\x2f]*[nct]|\x1b\[[\x30-\x3f]*\$p|\x1b\[>[\x30-\x3f]*q|\x1bZ`)

// FuzzGuestOutput: whatever the guest sends, nothing of an OSC, DCS, APC, PM or SOS
// introducer or a UTF-8 C1 control reaches the helper's terminal, and splitting the stream
// anywhere gives the same output.
func FuzzGuestOutput(f *testing.F) {
	f.Add([]byte("\x1b]52;c;x\x07\x1b[31mhi"), 3)
	f.Add([]byte("\xc2\x9d\x1bP\x1b\\"), 1)
	f.Add([]byte("\x9d52;c;x\x07\xc0\x9b\x1b%@\x1b[6n\xe2\x82\xac"), 5)
	f.Add([]byte("\x1b[?2004$p\x1b[>q\x05\xf0\x9f\x98\x80"), 7)
	f.Fuzz(func(t *testing.T, in []byte, cut int) {
		whole := guestFiltered(string(in))
		if cut < 0 {
			cut = -cut
		}
		cut %= len(in) + 1
		if split := guestFiltered(string(in[:cut]), string(in[cut:])); split != whole {
			t.Fatalf("split at %d: %q, whole %q", cut, split, whole)
		}
		for _, bad := range []string{"\x1b]", "\x1bP", "\x1b_", "\x1b^", "\x1bX", "\x1bk"} {
			if bytes.Contains([]byte(whole), []byte(bad)) {
				t.Fatalf("%q passed: %q", bad, whole)
			}
		}
		if !utf8.ValidString(whole) {
			t.Fatalf("invalid UTF-8 passed (8-bit C1 bytes, overlongs): %q", whole)
		}
		for _, r := range whole {
			if r >= 0x80 && r <= 0x9f || r == 0x05 {
				t.Fatalf("control %U passed: %q", r, whole)
			}
		}
		// No escape sequence but those that draw: after ESC only [ ( ) * + 7 8 = > M D E c
		// and the like: never ESC % (UTF-8 off) or ESC SP (8-bit controls).
		for i := 0; i+1 < len(whole); i++ {
			if whole[i] == 0x1b && strings.IndexByte("% ", whole[i+1]) >= 0 {
				t.Fatalf("ESC %q passed: %q", whole[i+1], whole)
			}
		}
		if m := answerRequest.FindString(whole); m != "" {
			t.Fatalf("a request the terminal answers passed (%q): %q", m, whole)
		}
	})
}

// The modes by which a terminal types into its input of its own (mouse, focus, keyboard
// protocols, bracketed paste) pass the filter, so that a guest's editor works; GuestReset
// turns each off once the session is over, so that none is left typing into the helper's
// shell.
func TestGuestReset(t *testing.T) {
	for _, set := range []string{"\x1b[?9h", "\x1b[?1000h", "\x1b[?1002h", "\x1b[?1003h", "\x1b[?1004h", "\x1b[?1005h", "\x1b[?1006h", "\x1b[?1015h", "\x1b[?1016h", "\x1b[?2004h", "\x1b[?1049h", "\x1b[?1h", "\x1b="} {
		if got := guestFiltered(set); got != set {
			t.Fatalf("%q: filtered %q, the test's premise is wrong", set, got)
		}
		var off string
		switch {
		case set == "\x1b=":
			off = "\x1b>"
		default:
			off = strings.TrimSuffix(set, "h") + "l"
		}
		if !strings.Contains(GuestReset, off) {
			t.Errorf("GuestReset does not undo %q (%q)", set, off)
		}
	}
	// The kitty keyboard protocol's flags and xterm's modifyOtherKeys.
	for _, off := range []string{"\x1b[=0;1u", "\x1b[>4;0m", "\x1b(B", "\x1b[0m"} {
		if !strings.Contains(GuestReset, off) {
			t.Errorf("GuestReset lacks %q", off)
		}
	}
	if got := guestFiltered(GuestReset); got != GuestReset {
		t.Errorf("GuestReset is itself filtered: %q", got)
	}
}
