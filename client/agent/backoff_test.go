package agent

import (
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterUpToTheCap(t *testing.T) {
	b := backoff{base: time.Second, max: 8 * time.Second}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second} {
		got := b.next()
		if got < want/2 || got > want {
			t.Fatalf("wait %d = %v, want within [%v, %v]", i, got, want/2, want)
		}
	}
	b.reset()
	if got := b.next(); got > time.Second {
		t.Errorf("after reset: %v", got)
	}
	// a crowd that failed together spreads out: 1000 agents' third waits are not one value
	seen := map[time.Duration]bool{}
	for i := 0; i < 1000; i++ {
		c := backoff{base: time.Second, max: time.Minute}
		c.next()
		c.next()
		seen[c.next().Truncate(10*time.Millisecond)] = true
	}
	if len(seen) < 100 {
		t.Errorf("1000 agents retry at only %d distinct times (10 ms buckets)", len(seen))
	}
}

func TestJitter(t *testing.T) {
	for i := 0; i < 1000; i++ {
		if got := jitter(time.Minute, 0.1); got < 54*time.Second || got > 66*time.Second {
			t.Fatalf("jitter(1m, 10%%) = %v", got)
		}
	}
	if jitter(0, 0.1) != 0 {
		t.Error("jitter of 0")
	}
}
