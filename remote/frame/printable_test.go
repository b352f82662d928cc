package frame

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"Alice Martin":              "Alice Martin",
		"你好 مرحبا":                  "你好 مرحبا",
		"view\x1b[2K\rcontrol":      "view[2Kcontrol",
		"a\tb":                      "a b",
		"bad \xff utf8":             "bad ? utf8",
		"c1 \u009b31m red":          "c1 31m red",
		"line\u2028sep\u2029para\n": "lineseppara",
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}
