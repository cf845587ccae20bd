package envoy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/toxi"
)

// TestPendingCompletion: the upstream's 200 is delivered, and Redis is
// cut off before the response can be stored, for longer than
// --finalize-timeout. The response is kept and retried in the background:
// Redis back within the lease, a retry gets the replay; Redis away until
// the lease would end, a retry gets 409 response-not-stored naming the
// status, not 409 outcome-unknown. Either way the job ran once.
func TestPendingCompletion(t *testing.T) {
	t.Parallel()
	s, tp := startCutStack(t)

	ok := t.Run("Redis back within the lease: the retry gets the replay", func(t *testing.T) {
		key := newKey(t)
		first := answeredWhileCut(t, s, tp, key, true)
		tp.SetEnabled(t, "redis", true)
		again := retryUntilAnswered(t, s, key)
		require.Equal(t, http.StatusOK, again.status)
		require.True(t, again.replayed())
		require.Equal(t, string(first.body), string(again.body))
		require.Equal(t, 1, s.executions(t, key))
		testenv.WaitFor(t, 5*time.Second, "the stored count", func() bool {
			return s.metric(t, `idemproxy_pending_completions_total{result="stored"}`) == 1
		})
	})
	_ = ok && t.Run("Redis away until the lease would end: 409 response-not-stored with the status", func(t *testing.T) {
		key := newKey(t)
		answeredWhileCut(t, s, tp, key, true)
		// The body is given up when the lease would end; only the status
		// is still waiting for Redis.
		testenv.WaitFor(t, 10*time.Second, "the body given up", func() bool {
			return s.metric(t, "idemproxy_pending_completion_bytes") == 0
		})
		tp.SetEnabled(t, "redis", true)
		testenv.WaitFor(t, 15*time.Second, "the status written", func() bool {
			return s.metric(t, `idemproxy_pending_completions_total{result="status_only"}`) == 1
		})
		again := retryUntilAnswered(t, s, key)
		require.Equal(t, http.StatusConflict, again.status)
		require.Equal(t, "urn:idemproxy:problem:response-not-stored", again.problemType())
		require.Contains(t, string(again.body), "completed with status 200")
		require.Equal(t, 1, s.executions(t, key))
	})
}

// TestPendingCompletion_off: with no completion kept
// (--max-pending-completions 0), a response Redis is away for until the
// lease ends is lost: the key reads as an unknown outcome, though the job
// ran and answered. This is what the default avoids.
func TestPendingCompletion_off(t *testing.T) {
	t.Parallel()
	s, tp := startCutStack(t, "--max-pending-completions", "0")
	key := newKey(t)
	answeredWhileCut(t, s, tp, key, false)
	// The lease (3 s) ends while Redis is away; the stream gives up then.
	testenv.WaitFor(t, 10*time.Second, "the completion given up", func() bool {
		return s.metric(t, `idemproxy_responses_total{result="store_error"}`) == 1
	})
	tp.SetEnabled(t, "redis", true)
	again := retryUntilAnswered(t, s, key)
	require.Equal(t, http.StatusConflict, again.status)
	require.Equal(t, "urn:idemproxy:problem:outcome-unknown", again.problemType())
	require.Equal(t, 1, s.executions(t, key))
}

// cutPath and cutBody are the 1 s job of the pending-completion tests.
const cutPath, cutBody = "/slow?delay=1s", `{"amount":700}`

// startCutStack is a stack whose Redis the test can cut off (Toxiproxy),
// with a short lease and --finalize-timeout; extra flags are added.
func startCutStack(t *testing.T, extra ...string) (*faultStack, *toxi.Toxiproxy) {
	t.Helper()
	tp := toxi.Start(t, binDir)
	proxyAddr := testenv.Addr(t)
	s := startFaultStack(t, faultConfig{
		redisVia: func(addr string) string {
			tp.CreateProxy(t, "redis", proxyAddr, addr)
			return proxyAddr
		},
		idemproxyArgs: append([]string{"--redis-timeout", "300ms", "--lock-ttl", "3s", "--heartbeat", "1s",
			"--finalize-timeout", "500ms", "--health-interval", "200ms"}, extra...),
	})
	return s, tp
}

// answeredWhileCut sends the 1 s job and cuts Redis once the backend runs
// it: the 200 arrives, its completion cannot be written. kept: wait until
// idemproxy keeps it for a background completion.
func answeredWhileCut(t *testing.T, s *faultStack, tp *toxi.Toxiproxy, key string, kept bool) reply {
	t.Helper()
	ch := s.goDo("POST", cutPath, cutBody, "Idempotency-Key", key)
	testenv.WaitFor(t, 5*time.Second, "the job to start", func() bool { return s.executions(t, key) == 1 })
	tp.SetEnabled(t, "redis", false)
	first := await(t, ch, 10*time.Second, "the first request")
	require.Equal(t, http.StatusOK, first.status, "the upstream's answer is delivered")
	if kept {
		testenv.WaitFor(t, 5*time.Second, "the completion kept", func() bool {
			return s.metric(t, "idemproxy_pending_completions") == 1
		})
	}
	return first
}

// retryUntilAnswered sends the key again until the store decides it (503
// while idemproxy reconnects, 409 in-progress while it is being stored).
func retryUntilAnswered(t *testing.T, s *faultStack, key string) reply {
	t.Helper()
	var r reply
	testenv.WaitFor(t, 10*time.Second, "an answer from the store", func() bool {
		r = s.do(t, "POST", cutPath, cutBody, "Idempotency-Key", key)
		return r.status != http.StatusServiceUnavailable && r.problemType() != "urn:idemproxy:problem:in-progress"
	})
	return r
}

// TestAcquireRefused_logs: with Redis cut off (connections refused), each
// keyed request gets 503 and nothing runs; the acquire was never sent, so
// no lock exists and no line speaks of releasing one or of an unknown
// outcome to come. Healed, each of those keys runs once.
func TestAcquireRefused_logs(t *testing.T) {
	t.Parallel()
	s, tp := startCutStack(t)
	tp.SetEnabled(t, "redis", false)
	testenv.WaitFor(t, 10*time.Second, "readiness to report Redis", func() bool {
		return readyz(s.adminURL) == http.StatusServiceUnavailable
	})
	before := len(s.idemproxy.Lines())
	var keys []string
	for range 10 {
		key := newKey(t)
		keys = append(keys, key)
		r := s.do(t, "POST", "/charge", `{"amount":1}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusServiceUnavailable, r.status)
	}
	// idemproxy writes each line before its answer leaves, but the test
	// reads its output on another goroutine: wait for the tenth.
	var logged string
	testenv.WaitFor(t, 5*time.Second, "ten refusals logged", func() bool {
		logged = strings.Join(s.idemproxy.Lines()[before:], "\n")
		return strings.Count(logged, "store failed; request refused (fail-closed)") >= 10
	})
	require.Equal(t, 10, strings.Count(logged, "store failed; request refused (fail-closed)"), logged)
	require.Equal(t, 10, strings.Count(logged, "refused before the lock was written"), logged)
	for _, claim := range []string{"releas", "giving back", "without saying whether it took the lock", "unknown outcome"} {
		require.NotContains(t, logged, claim)
	}
	tp.SetEnabled(t, "redis", true)
	for _, key := range keys {
		r := retryUntilAnswered(t, s, key)
		require.Equal(t, http.StatusOK, r.status)
		require.False(t, r.replayed())
		require.Equal(t, 1, s.executions(t, key))
	}
}
