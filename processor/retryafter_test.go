package processor

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestEstimateRetry(t *testing.T) {
	const s = time.Second
	ms := time.Millisecond
	tests := []struct {
		name                   string
		running, left, typical time.Duration
		header                 string
		basis                  string
	}{
		{"a 3 s route, a duplicate at once: when the first will be done", 100 * ms, 30 * s, 3 * s, "3", basisTypical},
		{"a 3 s route, late in the run: the rest of it", 2400 * ms, 28 * s, 3 * s, "1", basisTypical},
		{"slower than usual: as long again as it has run", 4500 * ms, 26 * s, 3 * s, "5", basisRunning},
		{"exactly typical: as long again", 3 * s, 27 * s, 3 * s, "3", basisRunning},
		{"no history: as long again as it has run", 1100 * ms, 29 * s, 0, "2", basisRunning},
		{"no history, just started: one second", 50 * ms, 30 * s, 0, "1", basisRunning},
		{"nothing known (a record without grant time): one second, not the lease", 0, 30 * s, 0, "1", basisRunning},
		{"nothing run, a known route: its typical duration", 0, 30 * s, 12 * s, "12", basisTypical},
		{"capped by the lease left", 20 * s, 9 * s, 0, "9", basisLease},
		{"typical beyond the lease: the lease left, rounded down", 1 * s, 4500 * ms, 60 * s, "4", basisLease},
		{"as long again would pass the lease: its whole seconds", 2300 * ms, 2500 * ms, 0, "2", basisLease},
		{"lease all but over: at least one second", 10 * s, 10 * ms, 0, "1", basisLease},
		{"lease over: at least one second", 10 * s, 0, 0, "1", basisLease},
		{"negative inputs (clock skew) count as none", -5 * s, 30 * s, 2 * s, "2", basisTypical},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := estimateRetry(tc.running, tc.left, tc.typical)
			require.Equal(t, tc.header, h.header())
			require.Equal(t, tc.basis, h.basis)
			require.LessOrEqual(t, h.wait, max(tc.left, 0), "never past the lease left")
			secs, err := strconv.Atoi(h.header())
			require.NoError(t, err)
			require.LessOrEqual(t, time.Duration(secs)*time.Second, max(tc.left, time.Second), "nor is Retry-After, but for its 1 s minimum")
		})
	}
}

func TestRouteDurations(t *testing.T) {
	t.Run("the first sample, then a weighted average", func(t *testing.T) {
		var r routeDurations
		require.Zero(t, r.typical("a/x"))
		r.observe("a/x", 4*time.Second)
		require.Equal(t, 4*time.Second, r.typical("a/x"))
		r.observe("a/x", 8*time.Second)
		require.Equal(t, 5*time.Second, r.typical("a/x"), "a quarter of the way to the new sample")
		r.observe("a/x", 0)
		require.Equal(t, 5*time.Second, r.typical("a/x"), "no duration is no sample")
		require.Zero(t, r.typical("a/y"))
	})
	t.Run("follows a changed backend within a few requests", func(t *testing.T) {
		var r routeDurations
		r.observe("a/x", 30*time.Second)
		for range 10 {
			r.observe("a/x", time.Second)
		}
		require.Less(t, r.typical("a/x"), 3*time.Second)
	})
	t.Run("bounded: new routes push out old ones", func(t *testing.T) {
		var r routeDurations
		for i := range 3 * maxDurationRoutes {
			r.observe(fmt.Sprintf("a/%d", i), time.Second)
		}
		require.Len(t, r.routes, maxDurationRoutes)
		require.Equal(t, time.Second, r.typical(fmt.Sprintf("a/%d", 3*maxDurationRoutes-1)), "the newest is kept")
	})
}

// histogramCount reads the sample count of a labelled histogram from reg.
func histogramCount(t *testing.T, reg *prometheus.Registry, name, label, value string) uint64 {
	t.Helper()
	return labelled(t, reg, name, label, value).GetHistogram().GetSampleCount()
}
