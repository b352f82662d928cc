package agent

import (
	"math/rand/v2"
	"time"
)

// backoff is exponential backoff with full jitter and a cap: the n-th wait is uniform in
// [d/2, d] with d = min(max, base*2^n), so a crowd of agents that failed together retries
// spread over time instead of in one second.
type backoff struct {
	base, max time.Duration
	n         int
}

func (b *backoff) next() time.Duration {
	d := b.base << b.n
	if d <= 0 || d > b.max {
		d = b.max
	} else {
		b.n++
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

func (b *backoff) reset() { b.n = 0 }

// jitter returns d changed by up to ±frac of itself, at random.
func jitter(d time.Duration, frac float64) time.Duration {
	if d <= 0 {
		return 0
	}
	delta := time.Duration(float64(d) * frac)
	return d - delta + time.Duration(rand.Int64N(int64(2*delta)+1))
}
