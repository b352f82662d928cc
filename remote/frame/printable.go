package frame

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// IsTerminalControl reports whether r is a character a terminal acts on rather than shows:
// C0 and C1 controls, DEL, and the line and paragraph separators.
func IsTerminalControl(r rune) bool {
	return unicode.IsControl(r) || r == 0x2028 || r == 0x2029
}

// Printable is text the other side chose (names, a reason, chat) as it may reach a
// terminal: valid UTF-8, tabs as spaces, and no terminal controls, so that it can neither
// rewrite what the screen says nor make the terminal answer on its input.
func Printable(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	return strings.Map(func(r rune) rune {
		if r == '\t' {
			return ' '
		}
		if IsTerminalControl(r) {
			return -1
		}
		return r
	}, s)
}
