package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "64MiB": 64 << 20, "512KiB": 512 << 10, "123": 123} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1MiB", "0", "1.5GiB", "1TB", "2048GiB", "1 GiB"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestLastGC(t *testing.T) {
	log := `{"level":"info","message":"dp up"}
gc 1 @0.012s 2%: 0.010+0.51+0.003 ms clock, 0.020+0.10/0.40/0.29+0.007 ms cpu, 3->3->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P
{"level":"info","message":"registered"}
gc 13 @41.2s 1%: 0.05+12+0.02 ms clock, 0.1+1.2/9.8/3.1+0.05 ms cpu, 88->90->62 MB, 89 MB goal, 4 MB stacks, 1 MB globals, 2 P
{"level":"info","message":"later"}
`
	path := filepath.Join(t.TempDir(), "dp.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := lastGC(path)
	want := gcLine{ok: true, n: 13, live: 62, goal: 89, stacks: 4}
	if got != want {
		t.Errorf("lastGC = %+v, want %+v", got, want)
	}
	if g := lastGC(filepath.Join(t.TempDir(), "none")); g.ok {
		t.Errorf("lastGC of a missing file = %+v", g)
	}
	if err := os.WriteFile(path, []byte("no gc here\ngc x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if g := lastGC(path); g.ok {
		t.Errorf("lastGC of a log without a gctrace line = %+v", g)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
