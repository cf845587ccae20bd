package loadgen

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLatencies_Percentile(t *testing.T) {
	t.Run("nearest rank over merged parts", func(t *testing.T) {
		var a, b []time.Duration
		for i := 1; i <= 1000; i++ {
			if i%2 == 0 {
				a = append(a, time.Duration(i)*time.Microsecond)
			} else {
				b = append(b, time.Duration(i)*time.Microsecond)
			}
		}
		l := Sorted(a, b)
		require.Equal(t, 500*time.Microsecond, l.Percentile(50))
		require.Equal(t, 990*time.Microsecond, l.Percentile(99))
		require.Equal(t, 999*time.Microsecond, l.Percentile(99.9))
		require.Equal(t, 1000*time.Microsecond, l.Percentile(100))
		require.Equal(t, time.Microsecond, l.Percentile(0))
	})

	t.Run("few samples: high percentiles are the maximum", func(t *testing.T) {
		l := Sorted([]time.Duration{3, 1, 2})
		require.Equal(t, time.Duration(2), l.Percentile(50))
		require.Equal(t, time.Duration(3), l.Percentile(99))
		require.Equal(t, time.Duration(3), l.Percentile(99.9))
	})

	t.Run("no samples is zero", func(t *testing.T) {
		require.Zero(t, Sorted().Percentile(99))
	})
}
