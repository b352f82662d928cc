package location

import (
	"slices"

	"github.com/miekg/dns"
)

// orderSRV returns the records in the order RFC 2782 says to try them: by priority
// ascending and, within a priority, by weighted random selection, a record of weight w
// being picked next with probability w/sum. As in Go's net package, weight-0 records come
// after the weighted ones of their priority, in random order (RFC 2782's inclusive draw
// gives them a small chance and skews the others). intn(n) returns a random integer in
// [0, n). Targets of "." ("no such service here") are left out; recs is not changed.
func orderSRV(recs []*dns.SRV, intn func(int) int) []*dns.SRV {
	var rest []*dns.SRV
	for _, r := range recs {
		if r.Target != "." {
			rest = append(rest, r)
		}
	}
	slices.SortStableFunc(rest, func(a, b *dns.SRV) int { return int(a.Priority) - int(b.Priority) })
	out := make([]*dns.SRV, 0, len(rest))
	for len(rest) > 0 {
		// the records of the lowest remaining priority
		n := 1
		for n < len(rest) && rest[n].Priority == rest[0].Priority {
			n++
		}
		group := slices.Clone(rest[:n])
		for len(group) > 0 {
			sum := 0
			for _, r := range group {
				sum += int(r.Weight)
			}
			i := 0
			if sum == 0 {
				i = intn(len(group))
			} else {
				draw, running := intn(sum), 0
				for i = range group {
					running += int(group[i].Weight)
					if running > draw {
						break
					}
				}
			}
			out = append(out, group[i])
			group = slices.Delete(group, i, i+1)
		}
		rest = rest[n:]
	}
	return out
}
