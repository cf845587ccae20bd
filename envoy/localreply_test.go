package envoy

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Envoy 1.40 passes its own local replies through ext_proc. These tests
// pin what idemproxy makes of them.

// TestEndToEnd_BackendUnreachable: a connect failure never reached the
// backend, so the key is released and the retry runs once the backend is back.
func TestEndToEnd_BackendUnreachable(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.backendProc.Kill() // SIGKILL: the port refuses connections at once

	key := newKey(t)
	r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusServiceUnavailable, r.status)
	require.Empty(t, r.problemType(), "Envoy's own 503, not ours")
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="released_status"}`))
	require.Zero(t, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))

	s.backendProc = startBackend(t, s.backendAddr)
	s.backendProc.LogAddr(t, "listening")
	r = s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.False(t, r.replayed())
	require.Equal(t, 1, s.executions(t, key))
}

// TestEndToEnd_UpstreamTimeout: Envoy gave up after the request reached the
// backend, which may still charge. The key is held as an unknown outcome:
// a retry gets 409 outcome-unknown, also long after the lock TTL, and the
// request never runs a second time.
func TestEndToEnd_UpstreamTimeout(t *testing.T) {
	t.Parallel()
	const lockTTL = 2 * time.Second
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--lock-ttl", lockTTL.String(), "--heartbeat", "500ms"},
		envoyEdits:    [][2]string{keyedRouteTimeout("1s")},
	})
	key := newKey(t)
	start := time.Now()
	r := s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusGatewayTimeout, r.status)
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))

	var retries int
	testenv.WaitFor(t, 3*lockTTL+10*time.Second, "retries past twice the lock TTL", func() bool {
		again := s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
		require.Equal(t, problem+"outcome-unknown", again.problemType())
		require.Empty(t, again.header.Get("Retry-After"), "retrying will not help")
		retries++
		time.Sleep(200 * time.Millisecond) // pacing, not synchronisation
		return time.Since(start) > 2*lockTTL
	})
	require.Equal(t, 1, s.executions(t, key), "the timed-out request never runs again")
	t.Logf("upstream timeout: client got %d; %d retries over %v all 409 outcome-unknown; executions %d",
		r.status, retries, time.Since(start).Round(time.Millisecond), s.executions(t, key))
}
