package envoy

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestEndToEnd_RoutePolicy: two routes of the shipped envoy.yaml, two
// policies, sent per route as gRPC metadata, no idemproxy restart. /strict/
// requires a key and locks for 10 s; the default route locks for 30 s.
func TestEndToEnd_RoutePolicy(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--admin-token", adminToken)

	t.Run("a keyless request is refused on the strict route and passes elsewhere", func(t *testing.T) {
		r := s.do(t, "POST", "/strict/charge", `{"amount":5000}`)
		require.Equal(t, http.StatusBadRequest, r.status)
		require.Equal(t, problem+"key-required", r.problemType())
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", `{"amount":5000}`).status)
	})

	t.Run("each route locks for its own TTL", func(t *testing.T) {
		host := s.url[len("http://"):]
		// leaseLeft is the lease left of a key in progress on path, as the
		// admin endpoint reads it; the duplicate's Retry-After is the
		// estimate of when the answer is there, bounded by it.
		leaseLeft := func(path string) time.Duration {
			key := newKey(t)
			first := s.goDo("POST", path, "", "Idempotency-Key", key)
			testenv.WaitFor(t, 5*time.Second, "the first request to reach the backend", func() bool { return s.executions(t, key) == 1 })
			dup := s.do(t, "POST", path, "", "Idempotency-Key", key)
			code, info := s.adminKey(t, "GET", host, key, adminToken)
			require.Equal(t, http.StatusConflict, dup.status, "%s", dup.body)
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, http.StatusOK, await(t, first, 10*time.Second, "the first request").status)
			left, ok := info["lease_left_ns"].(float64)
			require.True(t, ok, "%v", info)
			n, err := strconv.Atoi(dup.header.Get("Retry-After"))
			require.NoError(t, err)
			require.LessOrEqual(t, time.Duration(n)*time.Second, time.Duration(left)+time.Second, "never past the lease left")
			return time.Duration(left)
		}
		strict := leaseLeft("/strict/slow?delay=500ms")
		normal := leaseLeft("/slow?delay=500ms")
		t.Logf("lease left: strict route %s, default route %s", strict, normal)
		require.LessOrEqual(t, strict, 10*time.Second)
		require.Greater(t, normal, 10*time.Second)
	})

	t.Run("the strict route still replays", func(t *testing.T) {
		key := newKey(t)
		first := s.do(t, "POST", "/strict/charge", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, first.status)
		again := s.do(t, "POST", "/strict/charge", "", "Idempotency-Key", key)
		require.True(t, again.replayed())
		require.Equal(t, string(first.body), string(again.body))
		require.Equal(t, 1, s.executions(t, key))
	})
}

// TestEndToEnd_RoutePolicyInvalid: a route whose metadata idemproxy cannot
// read refuses its requests with a problem, never runs them unguarded.
func TestEndToEnd_RoutePolicyInvalid(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{{"value: 10s }", "value: soon }"}}})
	key := newKey(t)
	r := s.do(t, "POST", "/strict/charge", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusInternalServerError, r.status)
	require.Equal(t, problem+"misconfigured", r.problemType())
	require.Zero(t, s.executions(t, key))
	require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", key).status, "other routes are unaffected")
}
