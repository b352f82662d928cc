package agent

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
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

// after is the wait before the next try: the backoff's next wait, or, when the server
// asked with Retry-After for longer, that plus up to half of it again at random, so the
// agents it turned away together do not come back together.
func (b *backoff) after(retryAfter time.Duration) time.Duration {
	d := b.next()
	if retryAfter > d {
		d = retryAfter + time.Duration(rand.Int64N(int64(retryAfter/2)+1))
	}
	return d
}

// maxRetryAfter bounds how long a Retry-After may hold an agent back.
const maxRetryAfter = time.Hour

// RetryAfter returns the wait a 503 or 429 answer asks for in its Retry-After header, in
// seconds (the form the site's servers send), at most an hour; 0 for any other answer,
// no header or one that does not parse.
func RetryAfter(resp *http.Response) time.Duration {
	if resp == nil || (resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests) {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(resp.Header.Get("Retry-After")), 10, 32)
	if err != nil {
		return 0
	}
	return min(time.Duration(n)*time.Second, maxRetryAfter)
}

// Reconnect is the schedule the notification channel reconnects on. It is exported so
// that simulations of many agents (bench/) run the product's own schedule.
type Reconnect struct{ b backoff }

// NewReconnect returns the notification channel's schedule, as a new agent starts it.
func NewReconnect() *Reconnect {
	return &Reconnect{b: backoff{base: time.Second, max: 5 * time.Minute}}
}

// Wait returns how long to wait before the next try after a failed dial (resp is the
// server's answer, if any) or a lost channel (resp nil).
func (r *Reconnect) Wait(resp *http.Response) time.Duration { return r.b.after(RetryAfter(resp)) }

// Connected starts the schedule again from its first, shortest wait.
func (r *Reconnect) Connected() { r.b.reset() }

// jitter returns d changed by up to ±frac of itself, at random.
func jitter(d time.Duration, frac float64) time.Duration {
	if d <= 0 {
		return 0
	}
	delta := time.Duration(float64(d) * frac)
	return d - delta + time.Duration(rand.Int64N(int64(2*delta)+1))
}
