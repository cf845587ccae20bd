package envoy

import (
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestEndToEnd_IdemproxyKilled is scenario 5 of RELIABILITY.md: idemproxy
// dies (SIGKILL, so nothing is released or stored) while the backend works
// on a slow request. Its lock stays in Redis with no owner to renew it: the
// key must not run a second time before the lock TTL, neither while
// idemproxy is down (Envoy fails closed) nor after a new idemproxy took its
// place, and must run again once the TTL is over (--on-unknown=expire).
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
	require.Equal(t, http.StatusInternalServerError, r.status, "Envoy fails closed when its ext_proc stream breaks")
	// Envoy ends the request when its ext_proc stream fails: the backend
	// sees its connection close mid-request (it has already counted it).
	require.Equal(t, 1, s.envoyStat(t, "cluster.backend.upstream_cx_destroy_local_with_active_rq"))

	down := s.do(t, "POST", path, "", "Idempotency-Key", key)
	require.Equal(t, http.StatusInternalServerError, down.status, "idemproxy down: Envoy fails closed: %s", down.body)
	require.Equal(t, 1, s.executions(t, key))

	s.idemproxy, _, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), grpcAddr, "debug", flags...)
	restarted := time.Since(killed)

	// Poll with duplicates until the key runs again. Envoy may still answer
	// 500 while it reconnects; after that, 409 until the dead owner's lock
	// expires.
	var conflicts, reconnecting int
	var usable time.Duration
	var again reply
	testenv.WaitFor(t, lockTTL+10*time.Second, "the key to run again after the lock TTL", func() bool {
		sent := time.Since(killed)
		again = s.do(t, "POST", path, "", "Idempotency-Key", key)
		switch {
		case again.status == http.StatusInternalServerError && conflicts == 0 && again.problemType() == "":
			reconnecting++
		case again.status == http.StatusConflict:
			require.Equal(t, problem+"in-progress", again.problemType())
			require.NotEmpty(t, again.header.Get("Retry-After"))
			require.Equal(t, 1, s.executions(t, key), "a 409 never comes with a second execution")
			conflicts++
		default:
			usable = sent
			return true
		}
		time.Sleep(100 * time.Millisecond)
		return false
	})
	require.Equal(t, http.StatusOK, again.status, "%s", again.body)
	require.False(t, again.replayed())
	require.Positive(t, conflicts, "the restarted idemproxy must have refused the key while the lock lived")
	require.Greater(t, usable, lockTTL/2, "the key ran again long before the lock TTL")
	require.Equal(t, 2, s.executions(t, key), "one run before the crash, one after the TTL")

	replay := s.do(t, "POST", path, "", "Idempotency-Key", key)
	require.True(t, replay.replayed())
	require.Equal(t, string(again.body), string(replay.body))
	t.Logf("killed: restarted after %v; duplicates: %d x 500 while reconnecting, %d x 409; key ran again %v after the kill (lock TTL %v); backend executions %d",
		restarted.Round(time.Millisecond), reconnecting, conflicts, usable.Round(time.Millisecond), lockTTL, s.executions(t, key))
	require.EqualValues(t, conflicts, s.metric(t, `idemproxy_requests_total{outcome="in_progress_conflict"}`))
}
