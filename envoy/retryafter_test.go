package envoy

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Retry-After of a 409 in-progress, as a client that honours it meets it:
// an estimate of when the first request's answer will be there, not the
// lease left (30 s by default), through real Envoy and Redis.

// honoured is how a client that honours Retry-After fared with one key.
type honoured struct {
	attempts int           // requests sent, the last one answered
	waited   time.Duration // slept on Retry-After, in total
	given    []int         // the Retry-After of each 409
	lease    []int         // the lease left at each 409, rounded up: the previous Retry-After
	final    reply
}

// honourRetryAfter sends the request until it is answered with anything but
// a 409 in-progress, sleeping each Retry-After as a client that honours it
// would; at most limit attempts. It reads the key's lease left after each
// 409, the Retry-After the previous version gave.
func (s *stack) honourRetryAfter(t *testing.T, limit int, path, key string) honoured {
	t.Helper()
	host := s.url[len("http://"):]
	var h honoured
	for h.attempts < limit {
		h.attempts++
		r := s.do(t, "POST", path, "", "Idempotency-Key", key)
		if r.status != http.StatusConflict {
			h.final = r
			return h
		}
		require.Equal(t, problem+"in-progress", r.problemType(), "%s", r.body)
		secs, err := strconv.Atoi(r.header.Get("Retry-After"))
		require.NoError(t, err, "Retry-After is whole seconds")
		require.Positive(t, secs)
		h.given = append(h.given, secs)
		code, info := s.adminKey(t, "GET", host, key, adminToken)
		require.Equal(t, http.StatusOK, code)
		if left, ok := info["lease_left_ns"].(float64); ok {
			h.lease = append(h.lease, int((time.Duration(left)+time.Second-1)/time.Second))
		}
		wait := time.Duration(secs) * time.Second
		select {
		case <-t.Context().Done():
			t.Fatal("the test ended while the client waited")
		case <-time.After(wait): // the client's own wait, as Retry-After asks
		}
		h.waited += wait
	}
	t.Fatalf("no answer but 409 in-progress after %d attempts; Retry-After %v", limit, h.given)
	return h
}

// TestRetryAfter_ClientThatHonoursItGetsTheReplay: a duplicate of a 3 s
// job, from a client that sleeps Retry-After between attempts, gets the
// replay within a few attempts, waiting a few seconds, not the 30 s lease;
// the job runs once. First on a route with no history (the wait grows
// with the time the first request has run), then on the same route once
// one keyed request has completed there (the route's recent duration).
func TestRetryAfter_ClientThatHonoursItGetsTheReplay(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--admin-token", adminToken)
	const path, maxAttempts = "/slow?delay=3s", 6
	for _, round := range []string{"no history", "route history"} {
		key := newKey(t)
		first := s.goDo("POST", path, "", "Idempotency-Key", key)
		// The duplicate comes once the first request holds the key.
		require.Eventually(t, func() bool { return s.executions(t, key) == 1 }, 10*time.Second, 10*time.Millisecond)
		start := time.Now()
		h := s.honourRetryAfter(t, maxAttempts, path, key)
		took := time.Since(start)
		orig := await(t, first, 15*time.Second, "the first request")
		require.Equal(t, http.StatusOK, orig.status, "%s", orig.body)

		require.Equal(t, http.StatusOK, h.final.status, "%s", h.final.body)
		require.True(t, h.final.replayed(), "the duplicate gets the replay")
		require.NotEmpty(t, h.given, "the duplicate met the first request in progress")
		require.Equal(t, string(orig.body), string(h.final.body))
		require.Equal(t, 1, s.executions(t, key), "the job ran once")
		require.LessOrEqual(t, h.attempts, 4, "a few attempts; Retry-After %v", h.given)
		require.Less(t, h.waited, 15*time.Second, "well under the 30 s lease; Retry-After %v", h.given)
		require.Len(t, h.lease, len(h.given))
		for i := range h.given {
			require.LessOrEqual(t, h.given[i], h.lease[i], "never past the lease left")
		}
		if round == "route history" {
			require.LessOrEqual(t, h.attempts, 3, "the route's duration is known; Retry-After %v", h.given)
		}
		logFigures(t, "retry-after "+round, "attempts", h.attempts, "retry_after_s", fmt.Sprint(h.given),
			"slept", h.waited, "replay_after", took.Round(10*time.Millisecond),
			"previous_retry_after_s", fmt.Sprint(h.lease), "previous_first_wait", fmt.Sprintf("%ds", h.lease[0]))
	}
	require.Positive(t, s.metric(t, `idemproxy_retry_after_seconds{basis="typical"}`), "the second round used the route's history")
	require.Positive(t, s.metric(t, `idemproxy_retry_after_seconds{basis="running"}`), "the first round had none")
}
