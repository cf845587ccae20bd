package envoy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/toxi"
)

// TestEndToEnd_UnknownOutcome is scenario 8 of docs/reliability.md: Toxiproxy
// sits between Envoy and the backend and cuts the connection once the
// backend has run the request, so no complete response ever reaches Envoy.
// Cut before the response started, the outcome is unknown: by default the
// key is refused (never re-run) until an operator clears it; with the opt-in
// --on-unknown=rerun-after-ttl it is refused until its lock expires, then
// runs again. Cut mid-body, the status is known: the key is completed
// without its body and never re-runs.
func TestEndToEnd_UnknownOutcome(t *testing.T) {
	t.Parallel()
	shared := startShared(t)
	tp := toxi.Start(t, binDir)

	t.Run("with rerun-after-ttl the key runs again only after the lock TTL", func(t *testing.T) {
		t.Parallel()
		const lockTTL = 2 * time.Second
		s, cut := cutFrontend(t, shared, tp, "cut_expire", "--lock-ttl", lockTTL.String(), "--heartbeat", "500ms",
			"--on-unknown", "rerun-after-ttl")
		key := newKey(t)
		const path, body = "/charge", `{"amount":5000}`

		// The backend answers, and Toxiproxy closes the connection at the
		// first byte of the answer: Envoy never sees the response start.
		restore := cut(map[string]any{"bytes": 0}, 0)
		first, err := s.tryDo("POST", path, body, "Idempotency-Key", key)
		require.NoError(t, err)
		cutAt := time.Now()
		require.Equal(t, http.StatusServiceUnavailable, first.status, "Envoy's reply to the reset: %s", first.body)
		require.Equal(t, 1, s.executions(t, key))
		restore()

		var conflicts int
		var again reply
		var usable time.Duration
		testenv.WaitFor(t, lockTTL+10*time.Second, "the key to run again after the lock TTL", func() bool {
			sent := time.Since(cutAt)
			again = s.do(t, "POST", path, body, "Idempotency-Key", key)
			if again.status == http.StatusConflict && again.problemType() == problem+"in-progress" {
				require.Equal(t, 1, s.executions(t, key), "a 409 never comes with a second execution")
				conflicts++
				time.Sleep(100 * time.Millisecond)
				return false
			}
			usable = sent
			return true
		})
		require.Equal(t, http.StatusOK, again.status, "%s", again.body)
		require.False(t, again.replayed())
		require.Positive(t, conflicts, "retries before the lock TTL get 409")
		require.Greater(t, usable, lockTTL/2, "the key ran again long before the lock TTL")
		require.Equal(t, 2, s.executions(t, key), "rerun-after-ttl: the unknown outcome runs again after the TTL")
		require.True(t, s.do(t, "POST", path, body, "Idempotency-Key", key).replayed())
		require.EqualValues(t, 1, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))
		t.Logf("rerun-after-ttl: cut before the response: client got %d %q; retries: %d x 409, then ran again %v after the cut (lock TTL %v); backend executions %d",
			first.status, first.body, conflicts, usable.Round(time.Millisecond), lockTTL, s.executions(t, key))
	})

	t.Run("by default the key is never run again until an operator clears it", func(t *testing.T) {
		t.Parallel()
		const lockTTL = time.Second
		s, cut := cutFrontend(t, shared, tp, "cut_hold", "--lock-ttl", lockTTL.String(), "--heartbeat", "300ms",
			"--admin-token", adminToken)
		key := newKey(t)
		const path, body = "/charge", `{"amount":5000}`

		// The cut comes at the first byte of the answer: Envoy never sees
		// the response start, so nothing says whether the charge ran.
		restore := cut(map[string]any{"bytes": 0}, 0)
		first, err := s.tryDo("POST", path, body, "Idempotency-Key", key)
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, first.status, "Envoy's reply to the reset: %s", first.body)
		cutAt := time.Now()
		require.Equal(t, 1, s.executions(t, key))
		restore()

		// The hold is written when idemproxy sees the stream end, which
		// may come just after the client saw the cut: 409 in-progress
		// until then, outcome-unknown after, and never a run.
		var held, inProgress int
		var refused time.Duration
		testenv.WaitFor(t, 10*time.Second, "retries refused for twice the lock TTL", func() bool {
			r := s.do(t, "POST", path, body, "Idempotency-Key", key)
			require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
			switch r.problemType() {
			case problem + "outcome-unknown":
				held++
			case problem + "in-progress":
				require.Zero(t, held, "once held, the key stays held")
				inProgress++
			default:
				require.FailNow(t, "unexpected problem", "%s", r.body)
			}
			time.Sleep(100 * time.Millisecond)
			refused = time.Since(cutAt)
			return held > 0 && refused > 2*lockTTL
		})
		require.Equal(t, 1, s.executions(t, key), "held: never a second execution")

		host := strings.TrimPrefix(s.url, "http://")
		code, info := s.adminKey(t, "GET", host, key, adminToken)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "outcome_unknown", info["state"])
		code, res := s.adminKey(t, "DELETE", host, key, adminToken)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, true, res["deleted"])

		again, err := s.tryDo("POST", path, body, "Idempotency-Key", key)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, again.status)
		require.Equal(t, 2, s.executions(t, key), "a cleared key runs again")
		require.True(t, s.do(t, "POST", path, body, "Idempotency-Key", key).replayed())
		require.EqualValues(t, 1, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))
		t.Logf("hold (default): cut before the response: status %d; retries over %v: %d x 409 in-progress, %d x 409 outcome-unknown; "+
			"admin state %v, deleted; then ran: backend executions %d",
			first.status, refused.Round(time.Millisecond), inProgress, held, info["state"], s.executions(t, key))
	})

	t.Run("a cut mid-body after the status is a known outcome, never re-run", func(t *testing.T) {
		t.Parallel()
		s, cut := cutFrontend(t, shared, tp, "cut_body", "--lock-ttl", "1s", "--heartbeat", "300ms")
		key := newKey(t)
		const size = 256 << 10
		path := fmt.Sprintf("/large?bytes=%d", size)

		// The body trickles (128 KB/s), so Envoy has long sent the status
		// and headers on when the cut comes at 32 KiB.
		restore := cut(map[string]any{"bytes": 32 << 10}, 128)
		first, cutErr := s.tryDo("POST", path, "", "Idempotency-Key", key)
		require.True(t, cutErr != nil || len(first.body) < size,
			"the body must be cut: status %d, %d bytes, %v", first.status, len(first.body), cutErr)
		require.Equal(t, 1, s.executions(t, key))
		restore()

		var r reply
		testenv.WaitFor(t, 10*time.Second, "the key to be settled", func() bool {
			r = s.do(t, "POST", path, "", "Idempotency-Key", key)
			return r.problemType() != problem+"in-progress"
		})
		require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
		require.Equal(t, problem+"response-not-stored", r.problemType())
		require.Contains(t, string(r.body), "status 200")
		require.Equal(t, 1, s.executions(t, key), "never a second execution")
		require.EqualValues(t, 1, s.metric(t, `idemproxy_responses_total{result="stored_incomplete"}`))
		t.Logf("cut mid-body: client got %d bytes of %d (%v); retry: %d %s; executions %d",
			len(first.body), size, cutErr, r.status, r.problemType(), s.executions(t, key))
	})
}

// cutFrontend starts an idemproxy and an Envoy whose backend cluster goes
// through a new Toxiproxy proxy named proxy. cut installs a limit_data toxic
// on the backend's answers (close the connection after that many bytes),
// behind a bandwidth toxic of rate KB/s unless rate is 0, and returns the
// function that removes them.
func cutFrontend(t *testing.T, shared *stack, tp *toxi.Toxiproxy, proxy string, args ...string) (*stack, func(map[string]any, int) func()) {
	t.Helper()
	listen := testenv.Addr(t)
	tp.CreateProxy(t, proxy, listen, shared.backendAddr)
	s := addFrontend(t, shared, frontendConfig{idemproxyArgs: args, backendAddr: listen})
	cut := func(limit map[string]any, rate int) func() {
		if rate > 0 {
			tp.AddToxic(t, proxy, "trickle", "bandwidth", "downstream", map[string]any{"rate": rate})
		}
		tp.AddToxic(t, proxy, "cut", "limit_data", "downstream", limit)
		return func() {
			tp.RemoveToxic(t, proxy, "cut")
			if rate > 0 {
				tp.RemoveToxic(t, proxy, "trickle")
			}
		}
	}
	return s, cut
}
