package redisstore

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

const (
	gateWait = 10 * time.Second
	gatePoll = 20 * time.Millisecond
)

// gaugeValue reads a gauge's current value. It never fails the test (a
// gauge's Write cannot fail), so it may run in require.Eventually's
// goroutine.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	_ = g.Write(&m)
	return m.GetGauge().GetValue()
}

// runGate starts a Gate on url, checking every 50ms, until the test ends;
// its JSON log goes to the returned buffer.
func runGate(t *testing.T, url string) (*Gate, *testenv.Buffer) {
	t.Helper()
	topo, err := Connect(ConnectOptions{Mode: ModeStandalone, URL: url, Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	logs := &testenv.Buffer{}
	gate, err := NewGate(topo, GateOptions{Interval: 50 * time.Millisecond, Timeout: time.Second, Prefix: "idemproxy:",
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { gate.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return gate, logs
}

// TestGate_channelACL: an ACL user without idemproxy's channels is told
// of (one error log naming the fix, a gauge) without being refused, and
// the all-clear follows when the ACL is mended.
func TestGate_channelACL(t *testing.T) {
	rs := redistopo.Start(t)
	admin := rs.Client(t)
	require.NoError(t, admin.Do(t.Context(), "ACL", "SETUSER", "idemproxy", "reset", "on", ">pw", "~idemproxy:*", "+@all").Err())
	gate, logs := runGate(t, "redis://idemproxy:pw@"+rs.Addr+"/0")
	metric := func() float64 { return gaugeValue(gate.gauges.channelsRefused) }

	require.Eventually(t, func() bool { return metric() == 1 }, gateWait, gatePoll)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "may not publish on idemproxy's channels")
	}, gateWait, gatePoll)
	require.Contains(t, logs.String(), "add `&idemproxy:*` to the user's ACL")
	require.Eventually(t, gate.Ready, gateWait, gatePoll, "not refused for it")
	require.NoError(t, gate.Usable("k"))

	require.NoError(t, admin.Do(t.Context(), "ACL", "SETUSER", "idemproxy", "&idemproxy:*").Err())
	require.Eventually(t, func() bool { return metric() == 0 }, gateWait, gatePoll)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "may publish on idemproxy's channels again")
	}, gateWait, gatePoll)
	require.Equal(t, 1, strings.Count(logs.String(), "may not publish on idemproxy's channels"), "logged once")
}

// TestGate_evictingPolicy: an evicting Redis makes the store unusable
// and the gate not ready, until the policy is noeviction again; before
// the first check nothing is usable.
func TestGate_evictingPolicy(t *testing.T) {
	rs := redistopo.Start(t)
	admin := rs.Client(t)
	topo, err := Connect(ConnectOptions{Mode: ModeStandalone, URL: rs.URL(), Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	var reported []bool
	gate, err := NewGate(topo, GateOptions{Interval: time.Hour, Timeout: time.Second, Prefix: "idemproxy:",
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler),
		Report: func(ok bool) { reported = append(reported, ok) }})
	require.NoError(t, err)
	require.ErrorIs(t, gate.Usable("k"), errNotChecked)
	require.False(t, gate.Ready())

	gate.check(t.Context())
	require.NoError(t, gate.Usable("k"))
	require.True(t, gate.Ready())
	require.NoError(t, admin.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err())
	gate.check(t.Context())
	require.ErrorContains(t, gate.Usable("k"), "maxmemory-policy is allkeys-lru")
	require.False(t, gate.Ready())
	require.Equal(t, 1.0, gaugeValue(gate.gauges.evicting))
	require.Equal(t, []bool{false, true, false}, reported, "every check is reported")

	gate.Shutdown()
	require.False(t, gate.Ready())
	require.Zero(t, gaugeValue(gate.gauges.ready))
}
