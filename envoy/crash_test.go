package envoy

import (
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestEndToEnd_IdemproxyKilled is scenario 5 of docs/reliability.md: idemproxy
// dies (SIGKILL, so nothing is released, stored or marked) while the
// backend works on a slow request. Its lease stays in Redis with no owner to
// renew it. The key must never run a second time: not while idemproxy is
// down (Envoy fails closed), not after a new idemproxy took its place, and
// not after the lock TTL: the record outlives its lease, so the new
// idemproxy tells "forwarded, then the owner vanished" from "free" and
// answers 409 outcome-unknown.
func TestEndToEnd_IdemproxyKilled(t *testing.T) {
	t.Parallel()
	const lockTTL, heartbeat = 3 * time.Second, time.Second
	flags := []string{"--lock-ttl", lockTTL.String(), "--heartbeat", heartbeat.String()}
	s := startStack(t, flags...)
	// Envoy's idemproxy cluster has one address: the new idemproxy must
	// listen where the killed one did.
	grpcAddr := s.idemproxy.LogAddr(t, "grpc listening")
	key := newKey(t)
	const path = "/slow?delay=2s"

	first := make(chan reply, 1)
	go func() {
		r, err := s.tryDo("POST", path, "", "Idempotency-Key", key)
		if err != nil {
			t.Logf("first request: %v", err)
		}
		first <- r
	}()
	testenv.WaitFor(t, 10*time.Second, "the slow request at the backend", func() bool { return s.executions(t, key) == 1 })

	require.NoError(t, s.idemproxy.Signal(syscall.SIGKILL))
	testenv.Receive(t, s.idemproxy.Done(), 10*time.Second, "the killed idemproxy to exit")
	killed := time.Now()

	var r reply
	select {
	case r = <-first:
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the first request hung after idemproxy died")
	}
	t.Logf("first request, idemproxy killed mid-flight: status %d after %v: %s", r.status, r.elapsed.Round(time.Millisecond), r.body)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "Envoy fails closed when its ext_proc stream breaks")
	require.Equal(t, problem+"proxy-unavailable", r.problemType(), "Envoy's own reply, as problem+json (local_reply_config)")
	require.Equal(t, "1", r.header.Get("Retry-After"))
	// Envoy ends the request when its ext_proc stream fails: the backend
	// sees its connection close mid-request (it has already counted it).
	require.Equal(t, 1, s.envoyStat(t, "cluster.backend.upstream_cx_destroy_local_with_active_rq"))

	down := s.do(t, "POST", path, "", "Idempotency-Key", key)
	require.Equal(t, http.StatusServiceUnavailable, down.status, "idemproxy down: Envoy fails closed: %s", down.body)
	require.Equal(t, problem+"proxy-unavailable", down.problemType())
	require.Equal(t, 1, s.executions(t, key))

	s.idemproxy, _, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), grpcAddr, "debug", flags...)
	restarted := time.Since(killed)

	// Retry until twice the lock TTL has passed since the kill. Envoy may
	// still answer 500 while it reconnects; then 409 in-progress while the
	// dead owner's lease lasts, then 409 outcome-unknown, for good.
	var reconnecting, inProgress, unknown int
	var firstUnknown time.Duration
	testenv.WaitFor(t, 2*lockTTL+15*time.Second, "retries past twice the lock TTL", func() bool {
		sent := time.Since(killed)
		again, err := s.tryDo("POST", path, "", "Idempotency-Key", key)
		require.NoError(t, err)
		switch {
		case again.problemType() == problem+"proxy-unavailable" && inProgress+unknown == 0:
			reconnecting++
		case again.status == http.StatusConflict && again.problemType() == problem+"in-progress":
			require.Zero(t, unknown, "once unknown, the key stays unknown")
			require.NotEmpty(t, again.header.Get("Retry-After"))
			inProgress++
		case again.status == http.StatusConflict && again.problemType() == problem+"outcome-unknown":
			if unknown == 0 {
				firstUnknown = sent
			}
			unknown++
		default:
			require.FailNow(t, "the key ran or failed unexpectedly", "status %d: %s", again.status, again.body)
		}
		require.Equal(t, 1, s.executions(t, key), "never a second execution")
		time.Sleep(100 * time.Millisecond) // pacing, not synchronisation
		return time.Since(killed) > 2*lockTTL && unknown > 0
	})
	require.Positive(t, unknown)
	require.Greater(t, firstUnknown, lockTTL/2, "unknown only once the lease ran out")
	require.Equal(t, 1, s.executions(t, key), "one run before the crash, none after")
	t.Logf("killed: restarted after %v; duplicates: %d x 503 proxy-unavailable while reconnecting, %d x 409 in-progress, %d x 409 outcome-unknown from %v after the kill (lock TTL %v); backend executions %d",
		restarted.Round(time.Millisecond), reconnecting, inProgress, unknown, firstUnknown.Round(time.Millisecond), lockTTL, s.executions(t, key))
	require.EqualValues(t, unknown, s.metric(t, `idemproxy_requests_total{outcome="outcome_unknown"}`))
}
