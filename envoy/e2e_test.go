package envoy

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

const problem = "urn:idemproxy:problem:"

// newKey returns a key no other test uses.
func newKey(t testing.TB) string {
	var b [8]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return "k-" + hex.EncodeToString(b[:])
}

// TestEndToEnd runs the core scenarios through real Envoy, real Redis and
// the real binaries, with a short lock TTL so the long-job case stays short.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--lock-ttl", "3s", "--heartbeat", "1s", "--max-body-bytes", "65536")

	t.Run("a request without a key passes through and idemproxy is never called", func(t *testing.T) {
		before := s.envoyStat(t, "http.ingress.ext_proc.streams_started")
		for range 3 {
			r := s.do(t, "POST", "/charge", `{"amount":50}`)
			require.Equal(t, http.StatusOK, r.status)
			require.False(t, r.replayed())
		}
		require.Equal(t, before, s.envoyStat(t, "http.ingress.ext_proc.streams_started"))
		require.Zero(t, s.metric(t, `idemproxy_requests_total{outcome="passthrough"}`),
			"route gating must keep keyless requests away from idemproxy")
	})

	t.Run("a retried charge runs once and gets the first response back", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		first := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, first.status)
		require.False(t, first.replayed())

		again := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, again.status)
		require.True(t, again.replayed(), "a replay carries Idempotent-Replayed: true")
		require.Equal(t, string(first.body), string(again.body))
		require.Equal(t, first.header.Get("Content-Type"), again.header.Get("Content-Type"))
		require.Equal(t, []string{"validated", "captured"}, again.header.Values("X-Charge-Step"),
			"repeated headers are replayed in order")
		require.Empty(t, again.header.Values("Set-Cookie"), "Set-Cookie is not replayed")
		require.Equal(t, 1, s.executions(t, key))
	})

	t.Run("the IETF quoted key and the bare key are the same key", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		first := s.do(t, "POST", "/charge", "", "Idempotency-Key", `"`+key+`"`)
		require.Equal(t, http.StatusOK, first.status)
		again := s.do(t, "POST", "/charge", "", "X-Idempotency-Key", key)
		require.True(t, again.replayed())
		require.Equal(t, string(first.body), string(again.body))
	})

	t.Run("200 concurrent identical requests execute exactly once", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		const n = 200
		replies := make([]reply, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			// tryDo, not do: only the test goroutine may fail the test.
			wg.Go(func() { replies[i], errs[i] = s.tryDo("POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key) })
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		counts := map[string]int{}
		for _, r := range replies {
			switch {
			case r.status == http.StatusOK && r.replayed():
				counts["replayed"]++
			case r.status == http.StatusOK:
				counts["executed"]++
			case r.status == http.StatusConflict && r.problemType() == problem+"in-progress":
				counts["409"]++
			default:
				counts[fmt.Sprintf("unexpected %d %s", r.status, r.body)]++
			}
		}
		t.Logf("200 concurrent: %v, backend executions %d", counts, s.executions(t, key))
		require.Equal(t, 1, counts["executed"])
		require.Equal(t, n, counts["executed"]+counts["replayed"]+counts["409"])
		require.Equal(t, 1, s.executions(t, key))
	})

	t.Run("a job longer than the lock TTL keeps its lock and is replayed after", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		// TTL 3 s, heartbeat 1 s, backend 5 s: without the watchdog the
		// lock would expire at 3 s and a duplicate would run it again.
		start := time.Now()
		first := s.goDo("POST", "/slow?delay=5s", "", "Idempotency-Key", key)
		giveUp := time.After(30 * time.Second)
		var r reply
		var late int
		for done := false; !done; {
			select {
			case res := <-first:
				require.NoError(t, res.err)
				r = res.reply
				require.Equal(t, http.StatusOK, r.status)
				done = true
			case <-giveUp:
				require.FailNow(t, "the 5 s job never answered")
			case <-time.After(700 * time.Millisecond):
				if time.Since(start) < 500*time.Millisecond {
					continue
				}
				dup := s.do(t, "POST", "/slow?delay=5s", "", "Idempotency-Key", key)
				require.Equal(t, http.StatusConflict, dup.status, "duplicate at %v", time.Since(start))
				require.Equal(t, problem+"in-progress", dup.problemType())
				require.NotEmpty(t, dup.header.Get("Retry-After"))
				if time.Since(start) > 3500*time.Millisecond {
					late++
				}
			}
		}
		require.Positive(t, late, "at least one duplicate must have come after the lock TTL")
		again := s.do(t, "POST", "/slow?delay=5s", "", "Idempotency-Key", key)
		require.True(t, again.replayed())
		require.Equal(t, string(r.body), string(again.body))
		require.Equal(t, 1, s.executions(t, key))
		require.Positive(t, s.metric(t, `idemproxy_lock_renewals_total{result="ok"}`))
	})

	t.Run("the same key with a different body is refused with 422", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key).status)
		r := s.do(t, "POST", "/charge", `{"amount":9999}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		require.Equal(t, problem+"fingerprint-mismatch", r.problemType())
		r = s.do(t, "POST", "/charge?amount=1", `{"amount":5000}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusUnprocessableEntity, r.status, "the query is part of the fingerprint")
		require.Equal(t, 1, s.executions(t, key))
	})

	t.Run("a backend 500 is its outcome: stored, replayed, never run again", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		first := s.do(t, "POST", "/fail", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusInternalServerError, first.status)
		again := s.do(t, "POST", "/fail", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusInternalServerError, again.status)
		require.True(t, again.replayed())
		require.Equal(t, string(first.body), string(again.body))
		require.Equal(t, 1, s.executions(t, key))
	})

	t.Run("a 429 says the request was not processed: released, the retry runs", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		for i := 1; i <= 2; i++ {
			r := s.do(t, "POST", "/status?code=429", "", "Idempotency-Key", key)
			require.Equal(t, http.StatusTooManyRequests, r.status)
			require.False(t, r.replayed())
			require.Equal(t, i, s.executions(t, key))
		}
	})

	t.Run("a response above the cap reaches the client whole and is never re-run", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		const size = 200_000 // over the 64 KiB cap of this stack
		r := s.do(t, "GET", fmt.Sprintf("/large?bytes=%d", size), "", "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, r.status)
		require.Len(t, r.body, size)
		direct, err := http.Get(fmt.Sprintf("%s/large?bytes=%d", s.backend, size))
		require.NoError(t, err)
		want := make([]byte, size)
		defer direct.Body.Close()
		_, err = io.ReadFull(direct.Body, want)
		require.NoError(t, err)
		require.Equal(t, want, r.body, "the body passes through untouched")

		again := s.do(t, "GET", fmt.Sprintf("/large?bytes=%d", size), "", "Idempotency-Key", key)
		require.Equal(t, http.StatusConflict, again.status)
		require.Equal(t, problem+"response-not-stored", again.problemType())
		require.Contains(t, string(again.body), "status 200")
		require.Equal(t, 1, s.executions(t, key))
	})

	t.Run("invalid keys are refused with 400 and never reach the backend", func(t *testing.T) {
		t.Parallel()
		for name, hs := range map[string][]string{
			"too long":             {"Idempotency-Key", strings.Repeat("k", 256)},
			"inner space":          {"Idempotency-Key", "two words"},
			"empty quoted":         {"Idempotency-Key", `""`},
			"unterminated quote":   {"Idempotency-Key", `"abc`},
			"non-ASCII":            {"Idempotency-Key", "clé"},
			"two different values": {"Idempotency-Key", "a1", "Idempotency-Key", "b2"},
			"two headers disagree": {"Idempotency-Key", "a1", "X-Idempotency-Key", "b2"},
		} {
			r := s.do(t, "POST", "/charge", "", hs...)
			require.Equal(t, http.StatusBadRequest, r.status, name)
			require.Equal(t, problem+"invalid-key", r.problemType(), name)
			require.Zero(t, s.executions(t, hs[1]), name)
		}
	})

	t.Run("the same key on two authorities is two independent keys", func(t *testing.T) {
		t.Parallel()
		key := newKey(t)
		a := s.do(t, "POST", "/charge", "", "Idempotency-Key", key, "Host", "a.example")
		b := s.do(t, "POST", "/charge", "", "Idempotency-Key", key, "Host", "b.example")
		require.False(t, a.replayed())
		require.False(t, b.replayed())
		require.NotEqual(t, string(a.body), string(b.body))
		require.Equal(t, 2, s.executions(t, key))
		require.Equal(t, string(a.body), string(s.do(t, "POST", "/charge", "", "Idempotency-Key", key, "Host", "a.example").body))
		require.Equal(t, string(b.body), string(s.do(t, "POST", "/charge", "", "Idempotency-Key", key, "Host", "b.example").body))
	})
}

// TestEndToEnd_RedisDown proves fail-closed: with Redis gone nothing keyed
// reaches the backend, clients get a quick 503, and service resumes when
// Redis is back. This Redis has no persistence, so it comes back empty: a
// store reset, refused with 503 store-reset until an operator acknowledges
// it (TestStoreReset_RedisRestart has the rest).
func TestEndToEnd_RedisDown(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--admin-token", adminToken)
	s.redis.Stop()

	key := newKey(t)
	r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
	require.Equal(t, problem+"store-unavailable", r.problemType())
	require.NotEmpty(t, r.header.Get("Retry-After"))
	require.Less(t, r.elapsed, 2*time.Second, "our 503 must come before Envoy's 2 s message timeout")
	require.Zero(t, s.executions(t, key))
	t.Logf("503 with Redis down after %v", r.elapsed)

	testenv.WaitFor(t, 10*time.Second, "/readyz to report 503", func() bool {
		resp, err := http.Get(s.adminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})

	s.redis.Restart(t)
	testenv.WaitFor(t, 15*time.Second, "the store reset to be held", func() bool {
		return s.metric(t, "idemproxy_store_reset_held_primaries") == 1
	})
	require.Equal(t, problem+"store-reset", s.do(t, "POST", "/charge", "", "Idempotency-Key", key).problemType())
	code, _ := s.storeResets(t, "POST", "/ack", adminToken)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", key).status)
	require.Equal(t, 1, s.executions(t, key))
}
