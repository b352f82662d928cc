package progress

import (
	"bytes"
	"strings"
	"testing"
)

func TestRender(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 100, "[>         ]   0 % 0 B / 100 B"},
		{50, 100, "[=====>    ]  50 % 50 B / 100 B"},
		{100, 100, "[==========] 100 % 100 B / 100 B"},
		{3 << 20, 4 << 20, "[=======>  ]  75 % 3.0 MiB / 4.0 MiB"},
		{0, 0, "[==========] 100 % 0 B / 0 B"},
	} {
		if got := Render("x", tc.done, tc.total, 10); !strings.HasSuffix(got, tc.want) {
			t.Errorf("Render(%d, %d) = %q, want …%q", tc.done, tc.total, got, tc.want)
		}
	}
	if got := Render(strings.Repeat("a", 30)+"end", 0, 1, 10); !strings.HasPrefix(got, "…"+strings.Repeat("a", 20)+"end ") {
		t.Errorf("a long label keeps its end: %q", got)
	}
}

// Off a terminal there is no bar, and a nil bar takes every call.
func TestNoTerminalNoBar(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "x", 10)
	if b != nil {
		t.Fatal("a bar on a buffer")
	}
	b.Add(1)
	b.Set(2)
	b.Update(3, 10)
	b.Finish()
	if buf.Len() != 0 {
		t.Fatalf("wrote %q", buf.String())
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 1 << 30: "1.0 GiB", 5 << 40: "5.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
