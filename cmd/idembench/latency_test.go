package main

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
		l := sortedLatencies(a, b)
		require.Equal(t, 500*time.Microsecond, l.percentile(50))
		require.Equal(t, 990*time.Microsecond, l.percentile(99))
		require.Equal(t, 999*time.Microsecond, l.percentile(99.9))
		require.Equal(t, 1000*time.Microsecond, l.percentile(100))
		require.Equal(t, time.Microsecond, l.percentile(0))
	})

	t.Run("few samples: high percentiles are the maximum", func(t *testing.T) {
		l := sortedLatencies([]time.Duration{3, 1, 2})
		require.Equal(t, time.Duration(2), l.percentile(50))
		require.Equal(t, time.Duration(3), l.percentile(99))
		require.Equal(t, time.Duration(3), l.percentile(99.9))
	})

	t.Run("no samples is zero", func(t *testing.T) {
		require.Zero(t, sortedLatencies().percentile(99))
	})
}
