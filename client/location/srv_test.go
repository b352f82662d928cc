package location

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func srvRR(prio, weight uint16, target string) *dns.SRV {
	return &dns.SRV{Hdr: dns.RR_Header{Name: "_ibcm-mp._tcp.corp.test.", Rrtype: dns.TypeSRV, Class: dns.ClassINET}, Priority: prio, Weight: weight, Port: 443, Target: target}
}

func targets(recs []*dns.SRV) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Target)
	}
	return out
}

func TestOrderSRV(t *testing.T) {
	recs := []*dns.SRV{
		srvRR(20, 0, "backup."),
		srvRR(10, 10, "a."),
		srvRR(10, 30, "b."),
		srvRR(10, 0, "zero."),
		srvRR(5, 0, "."),
	}
	for _, tc := range []struct {
		name string
		draw int // what intn returns every time
		want []string
	}{
		// Priority 10 has weights zero 0, a 10, b 30: sum 40.
		{"draw 0 picks a", 0, []string{"a.", "b.", "zero.", "backup."}},
		{"draw 9 picks a", 9, []string{"a.", "b.", "zero.", "backup."}},
		{"draw 10 picks b", 10, []string{"b.", "a.", "zero.", "backup."}},
		{"draw 39 picks b", 39, []string{"b.", "a.", "zero.", "backup."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := targets(orderSRV(recs, func(n int) int { return min(tc.draw, n-1) }))
			if !slices.Equal(got, tc.want) {
				t.Errorf("order = %q, want %q", got, tc.want)
			}
		})
	}
	zeros := []*dns.SRV{srvRR(0, 0, "x."), srvRR(0, 0, "y."), srvRR(0, 0, "z.")}
	if got := targets(orderSRV(zeros, func(n int) int { return n - 1 })); !slices.Equal(got, []string{"z.", "y.", "x."}) {
		t.Errorf("all weight 0, drawing the last each time: %q, want [z. y. x.]", got)
	}
	if got := targets(recs); !slices.Equal(got, []string{"backup.", "a.", "b.", "zero.", "."}) {
		t.Errorf("orderSRV changed its input: %q", got)
	}
}

// TestOrderSRVWeights checks the weighted choice picks each record first in proportion to
// its weight.
func TestOrderSRVWeights(t *testing.T) {
	recs := []*dns.SRV{srvRR(0, 1, "light."), srvRR(0, 3, "heavy.")}
	r := rand.New(rand.NewPCG(1, 2))
	first := map[string]int{}
	const n = 4000
	for range n {
		first[orderSRV(recs, r.IntN)[0].Target]++
	}
	if h := float64(first["heavy."]) / n; h < 0.70 || h > 0.80 {
		t.Errorf("heavy first %.2f of the time, want about 0.75 (%v)", h, first)
	}
}
