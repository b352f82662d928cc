package agent

import (
	"net/http"
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

func TestReconnectHonoursRetryAfter(t *testing.T) {
	answer := func(status int, retryAfter string) *http.Response {
		r := &http.Response{StatusCode: status, Header: http.Header{}}
		if retryAfter != "" {
			r.Header.Set("Retry-After", retryAfter)
		}
		return r
	}
	seen := map[time.Duration]bool{}
	for i := 0; i < 1000; i++ {
		rc := NewReconnect()
		got := rc.Wait(answer(http.StatusServiceUnavailable, "10"))
		if got < 10*time.Second || got > 15*time.Second {
			t.Fatalf("503 with Retry-After: 10 waits %v, want within [10s, 15s]", got)
		}
		seen[got.Truncate(10*time.Millisecond)] = true
	}
	if len(seen) < 100 {
		t.Errorf("1000 agents turned away together come back at only %d distinct times (10 ms buckets)", len(seen))
	}
	for _, tc := range []struct {
		resp     *http.Response
		min, max time.Duration
	}{
		{nil, 500 * time.Millisecond, time.Second}, // a lost channel: the backoff alone
		{answer(http.StatusServiceUnavailable, ""), 500 * time.Millisecond, time.Second},
		{answer(http.StatusServiceUnavailable, "soon"), 500 * time.Millisecond, time.Second},
		{answer(http.StatusServiceUnavailable, "-5"), 500 * time.Millisecond, time.Second},
		{answer(http.StatusForbidden, "30"), 500 * time.Millisecond, time.Second}, // only 503 and 429 ask to wait
		{answer(http.StatusTooManyRequests, "2"), 2 * time.Second, 3 * time.Second},
		{answer(http.StatusServiceUnavailable, "99999999"), time.Hour, 90 * time.Minute}, // capped
	} {
		if got := NewReconnect().Wait(tc.resp); got < tc.min || got > tc.max {
			t.Errorf("Wait(%v) = %v, want within [%v, %v]", tc.resp, got, tc.min, tc.max)
		}
	}
	// Retry-After shorter than the backoff: the backoff wins
	rc := NewReconnect()
	for range 5 {
		rc.Wait(nil)
	}
	if got := rc.Wait(answer(http.StatusServiceUnavailable, "1")); got < 16*time.Second {
		t.Errorf("sixth wait with Retry-After: 1 = %v, want the backoff's [16s, 32s]", got)
	}
	rc.Connected()
	if got := rc.Wait(nil); got > time.Second {
		t.Errorf("after Connected: %v", got)
	}
}
