package processor

import (
	"context"
	"log/slog"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// newLoggedServer is newTestServer with its log kept.
func newLoggedServer(t *testing.T, store Store, mut func(*Config)) (*Server, *prometheus.Registry, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	srv, reg := newServerWith(t, store, mut, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	return srv, reg, logs
}

// until polls cond on the test goroutine until it holds, or fails.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// answered runs a keyed POST whose 200 the upstream sends in full.
func answered(t *testing.T, srv *Server, key string) {
	t.Helper()
	_, err := run(t, srv, endEOF, keyed("POST", key, true), respHeaders(false, ":status", "200", "content-type", "text/plain"), respBody("charged", true))
	require.NoError(t, err)
}

// duplicate is the answer a retry of key gets.
func duplicate(t *testing.T, srv *Server, key string) *idem.Record {
	t.Helper()
	out, err := run(t, srv, endEOF, keyed("POST", key, true))
	require.NoError(t, err)
	require.Len(t, out, 1)
	ir := out[0].GetImmediateResponse()
	require.NotNil(t, ir)
	return &idem.Record{Status: int(ir.GetStatus().GetCode()), Body: ir.GetBody()}
}

// pendingConfig: a short lease and finalize timeout.
func pendingConfig(c *Config) {
	c.LockTTL, c.Heartbeat = time.Second, 300*time.Millisecond
	c.FinalizeTimeout = 100 * time.Millisecond
}

// TestServer_pending_storedWhenBack: Redis refuses the completion past
// --finalize-timeout, then comes back within the lease. A duplicate in
// between is told the response was received and is being stored (not
// "still running"); once Redis is back, a retry gets the replay.
func TestServer_pending_storedWhenBack(t *testing.T) {
	store := newFakeStore()
	store.failOn("complete", errRedisDown)
	srv, reg, logs := newLoggedServer(t, store, pendingConfig)
	answered(t, srv, "k")
	require.EqualValues(t, 1, gauge(t, reg, "idemproxy_pending_completions"))

	p, _ := requireProblem(t, one(t, srv, "k"), 409, "in-progress")
	require.Contains(t, p.Detail, "has completed with status 200, and its response is being stored")
	require.NotContains(t, p.Detail, "still running")

	store.failOn("complete", nil)
	until(t, "the background completion", func() bool { return gauge(t, reg, "idemproxy_pending_completions") == 0 })
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingStored))
	got := duplicate(t, srv, "k")
	require.Equal(t, 200, got.Status)
	require.Equal(t, "charged", string(got.Body))
	require.Contains(t, logs.String(), "response stored in the background")
	require.NotContains(t, logs.String(), "level=ERROR msg=\"response")
}

// one is the single reply to a keyed duplicate of key.
func one(t *testing.T, srv *Server, key string) *extprocv3.ProcessingResponse {
	t.Helper()
	out, err := run(t, srv, endEOF, keyed("POST", key, true))
	require.NoError(t, err)
	require.Len(t, out, 1)
	return out[0]
}

// TestServer_pending_statusOnly: Redis stays away until the lease would
// end. The response is then stored as its status alone, so a retry gets
// 409 response-not-stored naming the status: not an unknown outcome.
func TestServer_pending_statusOnly(t *testing.T) {
	store := newFakeStore()
	store.failUntil("complete", errRedisDown, time.Now().Add(1500*time.Millisecond))
	store.failOn("renew", errRedisDown)
	srv, reg, logs := newLoggedServer(t, store, pendingConfig)
	answered(t, srv, "k")
	until(t, "the status written", func() bool { return gauge(t, reg, "idemproxy_pending_completions") == 0 })
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingStatusOnly))

	e, ok := store.entry(keyOf("k"))
	require.True(t, ok)
	require.NotNil(t, e.rec)
	require.True(t, e.rec.StoreFailed)
	require.Equal(t, 200, e.rec.Status)
	p, _ := requireProblem(t, one(t, srv, "k"), 409, "response-not-stored")
	require.Contains(t, p.Detail, "completed with status 200")
	require.Contains(t, p.Detail, "did not take its response in time")
	require.Contains(t, logs.String(), "its status alone is stored")
}

// TestServer_pending_caps: over --max-pending-completion-bytes a response
// is kept as its status alone; over --max-pending-completions it is not
// kept, and the log says so and what follows.
func TestServer_pending_caps(t *testing.T) {
	t.Run("bytes: kept without its body", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("complete", errRedisDown)
		srv, reg, logs := newLoggedServer(t, store, func(c *Config) { pendingConfig(c); c.MaxPendingBytes = 4 })
		answered(t, srv, "k")
		require.EqualValues(t, 1, gauge(t, reg, "idemproxy_pending_completions"))
		require.Zero(t, gauge(t, reg, "idemproxy_pending_completion_bytes"))
		store.failOn("complete", nil)
		until(t, "settled", func() bool { return gauge(t, reg, "idemproxy_pending_completions") == 0 })
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingBodyDrop))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingStatusOnly))
		require.Contains(t, logs.String(), "--max-pending-completion-bytes reached")
	})
	t.Run("count: not kept", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("complete", errRedisDown)
		srv, reg, logs := newLoggedServer(t, store, func(c *Config) { pendingConfig(c); c.MaxPendingCompletions = 1 })
		answered(t, srv, "a")
		answered(t, srv, "b")
		require.EqualValues(t, 1, gauge(t, reg, "idemproxy_pending_completions"))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingRefused))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStoreError))
		require.Contains(t, logs.String(), "not kept for a background retry: --max-pending-completions")
		require.NotContains(t, logs.String(), "until its lease ended")
	})
}

// TestServer_Drain: at shutdown a pending completion makes its last
// attempts at once, and says precisely what became of it.
func TestServer_Drain(t *testing.T) {
	store := newFakeStore()
	store.failOn("complete", errRedisDown)
	srv, reg, logs := newLoggedServer(t, store, func(c *Config) { pendingConfig(c); c.LockTTL = time.Minute })
	answered(t, srv, "k")
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	require.Zero(t, srv.Drain(ctx))
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingGaveUp))
	require.Contains(t, logs.String(), "neither it nor its status could be stored before the proxy shut down")
	require.Contains(t, logs.String(), "once its lease ends, the key reads as an unknown outcome")
}

// TestServer_pending_keepsWhy: a response that had no replayable body
// anyway (the body never ended) keeps saying so when only its status can
// be stored in the end.
func TestServer_pending_keepsWhy(t *testing.T) {
	store := newFakeStore()
	store.failUntil("complete", errRedisDown, time.Now().Add(1500*time.Millisecond))
	store.failOn("renew", errRedisDown)
	srv, reg, _ := newLoggedServer(t, store, pendingConfig)
	_, err := run(t, srv, endCanceled, keyed("POST", "k", true), respHeaders(false, ":status", "201"), respBody("part", false))
	require.NoError(t, err)
	until(t, "the status written", func() bool { return gauge(t, reg, "idemproxy_pending_completions") == 0 })
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingStatusOnly))
	e, _ := store.entry(keyOf("k"))
	require.NotNil(t, e.rec)
	require.True(t, e.rec.Incomplete)
	require.False(t, e.rec.StoreFailed)
	p, _ := requireProblem(t, one(t, srv, "k"), 409, "response-not-stored")
	require.Contains(t, p.Detail, "completed with status 201")
	require.Contains(t, p.Detail, "never reached the proxy in full")
}

// TestServer_pending_leaseRanOut: once the record's lease has run out
// while its response is still being stored here, a duplicate reaching this
// process is told that, not "outcome unknown".
func TestServer_pending_leaseRanOut(t *testing.T) {
	store := newFakeStore()
	store.failOn("complete", errRedisDown)
	store.failOn("renew", errRedisDown)
	srv, _, _ := newLoggedServer(t, store, func(c *Config) { pendingConfig(c); c.LockTTL = time.Minute })
	answered(t, srv, "k")
	store.advance(2 * time.Minute) // the store's clock: the lease is over
	p, _ := requireProblem(t, one(t, srv, "k"), 409, "in-progress")
	require.Contains(t, p.Detail, "has completed with status 200, and its response is being stored")
}

// TestServer_pending_renews: while the response is retried, the lease is
// renewed when Redis takes that, so the key stays in progress and ours.
func TestServer_pending_renews(t *testing.T) {
	store := newFakeStore()
	store.failUntil("complete", errRedisDown, time.Now().Add(900*time.Millisecond))
	srv, reg, _ := newLoggedServer(t, store, pendingConfig)
	answered(t, srv, "k")
	before := store.count("renew")
	until(t, "stored", func() bool { return gauge(t, reg, "idemproxy_pending_completions") == 0 })
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingStored))
	require.Greater(t, store.count("renew"), before, "renewed while the completion was retried")
}

// TestServer_Drain_thenKept: a completion handed over after the drain
// began (a stream the grace period cut) is settled at once, inline.
func TestServer_Drain_thenKept(t *testing.T) {
	store := newFakeStore()
	store.failOn("complete", errRedisDown)
	srv, reg, logs := newLoggedServer(t, store, pendingConfig)
	require.Zero(t, srv.Drain(t.Context()))
	answered(t, srv, "k")
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_pending_completions_total", "result", pendingGaveUp))
	require.Zero(t, gauge(t, reg, "idemproxy_pending_completions"))
	require.Contains(t, logs.String(), "before the proxy shut down")
}
