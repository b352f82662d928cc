package main

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// measurement is what a measured phase counted: operations that completed inside the
// window, and their latencies.
type measurement struct {
	count   int
	window  time.Duration
	latency []time.Duration // sorted
}

func (m measurement) rate() float64 { return float64(m.count) / m.window.Seconds() }

// percentile returns the q-th latency (nearest rank) in milliseconds.
func (m measurement) percentile(q float64) float64 {
	if len(m.latency) == 0 {
		return 0
	}
	i := max(int(math.Ceil(q*float64(len(m.latency))))-1, 0)
	return float64(m.latency[i]) / float64(time.Millisecond)
}

// measure runs op on workers goroutines, each calling it in a loop with a shared increasing
// index, for o.Warmup and then o.Duration. Operations that complete inside the measured
// window are counted; the first error stops every worker and is returned.
func measure(ctx context.Context, o Options, workers int, op func(ctx context.Context, i int) error) (measurement, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	from, to := start.Add(o.Warmup), start.Add(o.Warmup+o.Duration)
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		count   int
		latency []time.Duration
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(to) {
					break
				}
				if err := op(ctx, int(next.Add(1)-1)); err != nil {
					if ctx.Err() == nil {
						cancel(err)
					}
					return
				}
				t1 := time.Now()
				if !t1.Before(from) && t1.Before(to) {
					lat = append(lat, t1.Sub(t0))
				}
			}
			mu.Lock()
			count += len(lat)
			latency = append(latency, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return measurement{}, err // the first operation's error, or the caller's cancellation
	}
	slices.Sort(latency)
	return measurement{count: count, window: o.Duration, latency: latency}, nil
}
