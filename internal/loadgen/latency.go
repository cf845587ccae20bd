package loadgen

import (
	"math"
	"slices"
	"time"
)

// Latencies are every recorded latency of a run, sorted.
type Latencies []time.Duration

// Sorted merges parts into one sorted Latencies.
func Sorted(parts ...[]time.Duration) Latencies {
	var n int
	for _, p := range parts {
		n += len(p)
	}
	all := make([]time.Duration, 0, n)
	for _, p := range parts {
		all = append(all, p...)
	}
	slices.Sort(all)
	return all
}

// percentile is the nearest-rank percentile (p in 0..100): the smallest
// recorded latency with at least p% of all recorded Latencies at or below
// it. With 1,000 samples, p99.9 is the largest but none; with fewer, it is
// the maximum. Zero without samples.
func (l Latencies) Percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	// The epsilon keeps 99.9% of 1,000 at rank 999: in floating point it
	// comes out a hair above.
	rank := int(math.Ceil(p/100*float64(len(l)) - 1e-9))
	rank = min(max(rank, 1), len(l))
	return l[rank-1]
}
