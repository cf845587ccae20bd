package testenv

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMetrics_Value(t *testing.T) {
	text := "# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 2015\n" +
		"# TYPE idemproxy_requests_total counter\n" +
		"idemproxy_requests_total{outcome=\"acquired\"} 1000\nidemproxy_requests_total{outcome=\"replayed\"} 3\n" +
		"idemproxy_leases_lost_total{stage=\"renew\",x=\"y\"} 2\n"
	m, err := ParseMetrics(text)
	require.NoError(t, err)
	v, ok := m.Value("go_goroutines")
	require.True(t, ok)
	require.Equal(t, 2015.0, v)
	v, ok = m.Value(`idemproxy_requests_total{outcome="replayed"}`)
	require.True(t, ok)
	require.Equal(t, 3.0, v)
	v, ok = m.Value(`idemproxy_leases_lost_total{x="y",stage="renew"}`)
	require.True(t, ok, "labels in any order")
	require.Equal(t, 2.0, v)
	_, ok = m.Value("go_gor")
	require.False(t, ok)
	_, ok = m.Value(`idemproxy_requests_total{outcome="stored"}`)
	require.False(t, ok)
	_, ok = m.Value(`idemproxy_leases_lost_total{stage="renew"}`)
	require.False(t, ok, "the label set must match exactly")

	require.Equal(t, 1003.0, m.Sum("idemproxy_requests_total"))
	require.Zero(t, m.Sum("absent_total"))

	_, err = ParseMetrics("not a metric line\n")
	require.Error(t, err)
}
