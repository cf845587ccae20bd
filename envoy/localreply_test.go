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
// backend, which may still charge. The lock is kept until its TTL, so a
// retry gets 409 instead of a second execution; after the TTL the key is free.
func TestEndToEnd_UpstreamTimeout(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--lock-ttl", "2s", "--heartbeat", "500ms"},
		envoyEdits:    [][2]string{{"timeout: 60s", "timeout: 1s"}},
	})
	key := newKey(t)
	start := time.Now()
	r := s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusGatewayTimeout, r.status)
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))

	again := s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
	require.Equal(t, problem+"in-progress", again.problemType())

	var freed reply
	testenv.WaitFor(t, 10*time.Second, "the lock to expire", func() bool {
		freed = s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
		return freed.status != http.StatusConflict
	})
	require.Equal(t, http.StatusGatewayTimeout, freed.status, "after the TTL the retry runs again")
	require.GreaterOrEqual(t, time.Since(start)-freed.elapsed, 2*time.Second, "the key stayed locked for the lock TTL")
	require.Equal(t, 2, s.executions(t, key))
}
