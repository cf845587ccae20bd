package envoy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// storeResets calls the admin store-reset endpoint: GET lists, POST
// acknowledges (path "/ack"). It returns the status and the decoded body.
func (s *stack) storeResets(t *testing.T, method, path, token string) (int, map[string]any) {
	t.Helper()
	return s.admin(t, method, "/admin/v1/store-resets"+path, token)
}

// TestStoreReset_RedisRestart: Redis without persistence restarts under a
// running idemproxy with the shipped defaults. The retry of a key completed
// before gets 503 store-reset (no Retry-After), never a second run, and so
// does every other keyed request, until an operator, through the
// authenticated admin API, acknowledges the reset; then keys run again.
// With --on-store-reset=accept, the opt-in, the same retry runs a second
// time: the double execution the default prevents.
func TestStoreReset_RedisRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		accept bool
	}{{"default refuses until acknowledged", false}, {"accept runs the completed key again", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"--admin-token", adminToken, "--health-interval", "200ms"}
			if tc.accept {
				args = append(args, "--on-store-reset", "accept")
			}
			s := startStack(t, args...)
			done := newKey(t)
			require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", done).status)
			require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", done).replayed())

			s.redis.Restart(t)
			var retry reply
			testenv.WaitFor(t, 15*time.Second, "a retry answered by a Redis that is back", func() bool {
				retry = s.do(t, "POST", "/charge", "", "Idempotency-Key", done)
				return retry.problemType() != problem+"store-unavailable"
			})
			if tc.accept {
				require.Equal(t, http.StatusOK, retry.status, "%s", retry.body)
				require.False(t, retry.replayed())
				require.Equal(t, 2, s.executions(t, done), "accept: the completed charge ran twice")
				require.Contains(t, s.idemproxy.Output(), "MAY RUN TWICE")
				return
			}
			require.Equal(t, http.StatusServiceUnavailable, retry.status, "%s", retry.body)
			require.Equal(t, problem+"store-reset", retry.problemType())
			require.Empty(t, retry.header.Get("Retry-After"), "no guess at when an operator acts")
			fresh := newKey(t)
			require.Equal(t, problem+"store-reset", s.do(t, "POST", "/charge", "", "Idempotency-Key", fresh).problemType(),
				"a new key cannot be told from a lost one")
			require.Equal(t, 1, s.executions(t, done), "never a second run")
			require.Zero(t, s.executions(t, fresh))
			require.Equal(t, http.StatusOK, s.do(t, "GET", "/charge", "").status, "unkeyed requests are served")
			testenv.WaitFor(t, 10*time.Second, "the health check to hold the primary", func() bool {
				return s.metric(t, "idemproxy_store_reset_held_primaries") == 1
			})
			require.EqualValues(t, 1, s.metric(t, "idemproxy_store_resets_total"))
			require.EqualValues(t, 2, s.metric(t, `idemproxy_requests_total{outcome="store_reset"}`))
			require.Equal(t, 1, strings.Count(s.idemproxy.Output(), "redis primary lost its records"), "logged once")

			code, _ := s.storeResets(t, "POST", "/ack", "")
			require.Equal(t, http.StatusUnauthorized, code)
			code, list := s.storeResets(t, "GET", "", adminToken)
			require.Equal(t, http.StatusOK, code)
			require.Len(t, list["held"], 1)
			code, acked := s.storeResets(t, "POST", "/ack", adminToken)
			require.Equal(t, http.StatusOK, code)
			require.Len(t, acked["acknowledged"], 1)
			require.Empty(t, acked["held"])

			after := s.do(t, "POST", "/charge", "", "Idempotency-Key", done)
			require.Equal(t, http.StatusOK, after.status, "%s", after.body)
			require.Equal(t, 2, s.executions(t, done), "acknowledged: the operator let keys run again")
			require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", done).replayed())
			require.Contains(t, s.idemproxy.Output(), "store reset acknowledged by an operator")
		})
	}
}
