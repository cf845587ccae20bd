package processor

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// waitConfig waits up to maxWait, re-checking rarely so a test sees that
// the notice, not the re-check, woke the waiter.
func waitConfig(maxWait time.Duration) func(*Config) {
	return func(c *Config) { c.InProgress, c.MaxWait, c.WaitRecheck = InProgressWait, maxWait, time.Hour }
}

// startWaiter sends a duplicate and checks that idemproxy first extends
// Envoy's timer for the held message.
func startWaiter(t *testing.T, srv *Server, store *fakeStore) *session {
	t.Helper()
	dup := serve(t, srv)
	dup.send(keyed("POST", "k", true))
	ovr := dup.reply()
	require.Nil(t, ovr.GetResponse(), "the first message only extends Envoy's timer")
	require.Equal(t, srv.cfg.MaxWait+waitSlack, ovr.GetOverrideMessageTimeout().AsDuration())
	require.Eventually(t, func() bool { return store.watching(keyOf("k")) == 1 }, waitFor, time.Millisecond)
	return dup
}

// waitOnFirst starts a first request for key k and a duplicate that
// waits for it, on a server configured by mut.
func waitOnFirst(t *testing.T, mut func(*Config)) (*fakeStore, *prometheus.Registry, *session, *session) {
	t.Helper()
	store := newFakeStore()
	srv, reg := newTestServer(t, store, mut)
	first := serve(t, srv)
	requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
	return store, reg, first, startWaiter(t, srv, store)
}

func TestServer_Process_waitForTheReplay(t *testing.T) {
	t.Run("a duplicate gets the replay the moment the first request completes", func(t *testing.T) {
		store, reg, first, dup := waitOnFirst(t, waitConfig(10*time.Second))
		require.EqualValues(t, 1, gauge(t, reg, "idemproxy_waiters"))

		start := time.Now()
		first.roundTrip(respHeaders(false, ":status", "201"))
		first.roundTrip(respBody("charged", true))
		ir, hs := immediateOf(t, dup.reply())
		require.EqualValues(t, 201, ir.GetStatus().GetCode())
		require.Equal(t, "charged", string(ir.GetBody()))
		require.Equal(t, "true", headerGet(hs, "idempotent-replayed"))
		require.Less(t, time.Since(start), time.Second, "woken by the notice, not a re-check (an hour)")
		dup.end(endEOF)
		require.NoError(t, dup.wait())
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitReplayed))
		require.EqualValues(t, 0, gauge(t, reg, "idemproxy_waiters"))
		require.Zero(t, store.watching(keyOf("k")), "the subscription ends with its waiter")
	})
	t.Run("when the first request gives its key back, the waiter runs it", func(t *testing.T) {
		_, reg, first, dup := waitOnFirst(t, waitConfig(10*time.Second))
		first.roundTrip(respHeaders(false, ":status", "429")) // released
		resp := dup.reply()
		require.NotNil(t, resp.GetRequestHeaders(), "the waiter goes upstream itself")
		fence, _ := fenceOf(resp)
		require.Equal(t, "2", fence, "with a grant of its own")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitAcquired))
	})
	t.Run("an unknown outcome ends the wait with 409 outcome-unknown", func(t *testing.T) {
		_, _, first, dup := waitOnFirst(t, waitConfig(10*time.Second))
		first.end(endCanceled) // abandoned
		requireProblem(t, dup.reply(), 409, "outcome-unknown")
	})
	t.Run("after --max-wait the duplicate gets 409 in-progress with Retry-After", func(t *testing.T) {
		_, reg, _, dup := waitOnFirst(t, waitConfig(100*time.Millisecond))
		_, hs := requireProblem(t, dup.reply(), 409, "in-progress")
		// The store's clock stands still: the first request has run for
		// no time on a route with no history, so the estimate (1 s), not
		// the lease left (30 s).
		require.Equal(t, "1", headerGet(hs, "retry-after"))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitTimeout))
		require.EqualValues(t, 1, histogramCount(t, reg, "idemproxy_retry_after_seconds", "basis", basisRunning))
	})
}

// TestServer_Process_waitNotices: Waiters learn of their key by notice, by re-check, and together.
func TestServer_Process_waitNotices(t *testing.T) {
	t.Run("a lost notice is made up for by the re-check", func(t *testing.T) {
		store := newFakeStore()
		store.mute()
		srv, _ := newTestServer(t, store, func(c *Config) { c.InProgress, c.WaitRecheck = InProgressWait, 50*time.Millisecond })
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		dup := startWaiter(t, srv, store)
		first.roundTrip(respHeaders(true, ":status", "200"))
		store.recheck()
		ir, _ := immediateOf(t, dup.reply())
		require.EqualValues(t, 200, ir.GetStatus().GetCode())
	})
	t.Run("without notices (the watch failed) the waiter re-checks on its own", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("watch", errRedisDown)
		srv, _ := newTestServer(t, store, func(c *Config) { c.InProgress, c.WaitRecheck = InProgressWait, 50*time.Millisecond })
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		dup := serve(t, srv)
		dup.send(keyed("POST", "k", true))
		require.NotNil(t, dup.reply().GetOverrideMessageTimeout())
		first.roundTrip(respHeaders(true, ":status", "200"))
		ir, _ := immediateOf(t, dup.reply())
		require.EqualValues(t, 200, ir.GetStatus().GetCode())
	})
	t.Run("a key's waiters share one read when prompted", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, waitConfig(10*time.Second))
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		const n = 20
		var dups []*session
		for range n {
			dup := serve(t, srv)
			dup.send(keyed("POST", "k", true))
			require.NotNil(t, dup.reply().GetOverrideMessageTimeout())
			dups = append(dups, dup)
		}
		require.Eventually(t, func() bool { return store.watching(keyOf("k")) == n }, waitFor, time.Millisecond)
		// A slow read: waiters scheduled after it began join it or
		// take its result, never a read of their own.
		store.holdPeeks(50 * time.Millisecond)
		first.roundTrip(respHeaders(false, ":status", "201"))
		first.roundTrip(respBody("charged", true))
		for _, dup := range dups {
			ir, _ := immediateOf(t, dup.reply())
			require.EqualValues(t, 201, ir.GetStatus().GetCode())
		}
		require.Equal(t, 1, store.count("peek"), "one read for all of them")
		require.Equal(t, 1+n, store.count("acquire"), "each request's own acquire, nothing per wait")
		require.EqualValues(t, n, counter(t, reg, "idemproxy_waits_total", "result", waitReplayed))
	})
	t.Run("a client that hangs up frees its waiter at once", func(t *testing.T) {
		store, reg, _, dup := waitOnFirst(t, waitConfig(10*time.Second))
		dup.st.cancel()
		require.NoError(t, dup.wait())
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitGone))
		require.EqualValues(t, 0, gauge(t, reg, "idemproxy_waiters"))
		require.Zero(t, store.watching(keyOf("k")))
	})
}

// TestServer_Process_waitStoreFailures: A Redis that fails while duplicates wait.
func TestServer_Process_waitStoreFailures(t *testing.T) {
	t.Run("a failed read is looked at again: the waiter still gets the replay", func(t *testing.T) {
		store, reg, first, dup := waitOnFirst(t, waitConfig(10*time.Second))
		store.failTimes("peek", errRedisDown, 3) // a failover's moment
		first.roundTrip(respHeaders(false, ":status", "201"))
		first.roundTrip(respBody("charged", true))
		ir, _ := immediateOf(t, dup.reply())
		require.EqualValues(t, 201, ir.GetStatus().GetCode())
		require.Equal(t, 4, store.count("peek"), "3 failed reads, each looked at again without a notice or re-check, then the replay")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitReplayed))
	})
	t.Run("a Redis that fails until --max-wait ends the wait with a 503", func(t *testing.T) {
		store, reg, first, dup := waitOnFirst(t, waitConfig(300*time.Millisecond))
		store.failOn("peek", errRedisDown)
		first.roundTrip(respHeaders(true, ":status", "200"))
		requireProblem(t, dup.reply(), 503, "store-unavailable")
		require.Greater(t, store.count("peek"), 1, "looked again before giving up")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitError))
	})
	t.Run("reads that fail for 2 s are an outage: 503 then, before --max-wait", func(t *testing.T) {
		store, reg, first, dup := waitOnFirst(t, waitConfig(time.Minute))
		store.failOn("peek", errRedisDown)
		start := time.Now()
		first.roundTrip(respHeaders(true, ":status", "200"))
		requireProblem(t, dup.reply(), 503, "store-unavailable")
		require.GreaterOrEqual(t, time.Since(start), waitReadGiveUp, "not at the first failed read")
		require.Less(t, time.Since(start), time.Minute, "not held until --max-wait")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitError))
	})
	t.Run("a failed acquire of a freed key is a 503", func(t *testing.T) {
		store, reg, first, dup := waitOnFirst(t, waitConfig(10*time.Second))
		store.failOn("acquire", errRedisDown)
		first.roundTrip(respHeaders(true, ":status", "429")) // released: the waiter races for it
		requireProblem(t, dup.reply(), 503, "store-unavailable")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitError))
	})
}

// TestServer_Process_waitAdmission: Which duplicates wait at all.
func TestServer_Process_waitAdmission(t *testing.T) {
	t.Run("beyond --max-waiters the duplicate gets the 409 at once", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, func(c *Config) { waitConfig(10 * time.Second)(c); c.MaxWaiters = 1 })
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		startWaiter(t, srv, store)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		requireProblem(t, out[0], 409, "in-progress")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_waits_total", "result", waitFull))
	})
	t.Run("a duplicate with another body does not wait: 422 at once", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, waitConfig(10*time.Second))
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("other", true))
		require.NoError(t, err)
		requireProblem(t, out[1], 422, "fingerprint-mismatch")
	})
	t.Run("the route decides: a conflict route answers 409 at once", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		requireProblem(t, out[0], 409, "in-progress")
		require.Zero(t, store.watching(keyOf("k")))
	})
}

func TestServer_Process_shadow(t *testing.T) {
	shadow := func(c *Config) { c.Mode = ModeShadow }
	t.Run("what enforcement would refuse or replay goes upstream, counted", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, shadow)
		first := serve(t, srv)
		owner := first.roundTrip(keyed("POST", "k", true))
		requireContinue(t, owner)
		fence, _ := fenceOf(owner)
		require.Equal(t, "1", fence, "the owner still gets its fence")
		// A duplicate while in progress: would be 409.
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.NotNil(t, out[0].GetRequestHeaders(), "passed upstream")
		_, removed := fenceOf(out[0])
		require.True(t, removed, "no grant, so no fence, and not the client's own")
		// Another body: would be 422.
		out, err = run(t, srv, endEOF, keyed("POST", "k", false), reqBody("other", true))
		require.NoError(t, err)
		require.NotNil(t, out[1].GetRequestBody())
		// After completion, a retry: would be the replay.
		first.roundTrip(respHeaders(true, ":status", "200"))
		out, err = run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.NotNil(t, out[0].GetRequestHeaders())
		// A bad key: would be 400.
		out, err = run(t, srv, endEOF, keyed("POST", "", true))
		require.NoError(t, err)
		require.NotNil(t, out[0].GetRequestHeaders())
		require.NotNil(t, out[0].GetModeOverride(), "nothing more of it is sent")

		for would, n := range map[string]float64{outcomeConflict: 1, outcomeMismatch: 1, outcomeReplayed: 1, outcomeInvalidKey: 1} {
			require.EqualValues(t, n, counter(t, reg, "idemproxy_shadow_decisions_total", "would", would), would)
		}
		rec, _ := store.entry(keyOf("k"))
		require.NotNil(t, rec.rec, "the record enforcement will read was made in shadow")
	})
	t.Run("a store outage goes upstream too", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("acquire", errRedisDown)
		srv, reg := newTestServer(t, store, shadow)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.NotNil(t, out[0].GetRequestHeaders())
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_shadow_decisions_total", "would", outcomeStoreError))
	})
	t.Run("a shadow route does not wait", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.Mode, c.InProgress = ModeShadow, InProgressWait })
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.NotNil(t, out[0].GetRequestHeaders())
	})
}
