package processor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fastHeartbeat renews every 20ms, so a test sees several renewals quickly.
func fastHeartbeat(c *Config) {
	c.LockTTL = time.Second
	c.Heartbeat = 20 * time.Millisecond
}

const poll = 5 * time.Millisecond

func TestWatchdog_renewsWhileUpstream(t *testing.T) {
	store := newFakeStore()
	srv, reg := newTestServer(t, store, fastHeartbeat)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
	token := store.callsOf("acquire")[0].token

	require.Eventually(t, func() bool { return len(store.callsOf("renew")) >= 3 }, waitFor, poll)
	for _, c := range store.callsOf("renew") {
		require.Equal(t, keyOf("k"), c.key)
		require.Equal(t, token, c.token)
		require.True(t, c.hasDeadline, "each renewal is bounded by the store timeout")
	}
	require.GreaterOrEqual(t, counter(t, reg, "idemproxy_lock_renewals_total", "result", renewOK), 3.0)

	requireContinue(t, s.roundTrip(respHeaders(true, ":status", "200")))
	// complete() stops the watchdog and waits for it before storing.
	require.False(t, watchdogRunning(srv), "no renewal after the response is stored")
	renewals := len(store.callsOf("renew"))
	all := store.callsOf("")
	require.Equal(t, "complete", all[len(all)-1].op, "every renewal happened before the completion")

	s.end(endEOF)
	require.NoError(t, s.wait())
	require.Len(t, store.callsOf("renew"), renewals)
	require.Zero(t, counter(t, reg, "idemproxy_leases_lost_total", "stage", stageRenew))
}

func TestWatchdog_stopsOnRelease(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, fastHeartbeat)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
	require.Eventually(t, func() bool { return len(store.callsOf("renew")) >= 1 }, waitFor, poll)
	s.roundTrip(respHeaders(false, ":status", "429"))
	require.False(t, watchdogRunning(srv))
	all := store.callsOf("")
	require.Equal(t, "release", all[len(all)-1].op)
	s.end(endCanceled)
	require.NoError(t, s.wait())
}

func TestWatchdog_stopsWhenStreamEnds(t *testing.T) {
	for _, kind := range endKinds {
		t.Run("ended by "+string(kind), func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, fastHeartbeat)
			s := serve(t, srv)
			requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
			require.Eventually(t, func() bool { return len(store.callsOf("renew")) >= 1 }, waitFor, poll)
			s.end(kind)
			require.NoError(t, s.wait())
			require.False(t, watchdogRunning(srv))
		})
	}
}

func TestWatchdog_lostLease(t *testing.T) {
	store := newFakeStore()
	srv, reg := newTestServer(t, store, fastHeartbeat)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
	store.steal(keyOf("k"))

	require.Eventually(t, func() bool {
		return counter(t, reg, "idemproxy_leases_lost_total", "stage", stageRenew) == 1
	}, waitFor, poll)
	require.Eventually(t, func() bool { return !watchdogRunning(srv) }, waitFor, poll, "the watchdog stops after a lost renewal")
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_lock_renewals_total", "result", renewLost))
	renewals := len(store.callsOf("renew"))

	// The response then finds the lease gone and does not overwrite.
	requireContinue(t, s.roundTrip(respHeaders(true, ":status", "200")))
	s.end(endEOF)
	require.NoError(t, s.wait())
	require.Len(t, store.callsOf("renew"), renewals, "no renewal after the loss")
	e, _ := store.entry(keyOf("k"))
	require.Equal(t, "thief", e.token)
	require.Nil(t, e.rec)
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_leases_lost_total", "stage", stageDone))
}

func TestWatchdog_transientErrorsRetry(t *testing.T) {
	store := newFakeStore()
	store.failOn("renew", errRedisDown)
	srv, reg := newTestServer(t, store, fastHeartbeat)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))

	require.Eventually(t, func() bool {
		return counter(t, reg, "idemproxy_lock_renewals_total", "result", renewError) >= 2
	}, waitFor, poll, "a failed renewal is retried at the next heartbeat")
	require.True(t, watchdogRunning(srv))
	require.Zero(t, counter(t, reg, "idemproxy_leases_lost_total", "stage", stageRenew))

	s.end(endCanceled)
	require.NoError(t, s.wait())
	require.False(t, watchdogRunning(srv))
}

func TestWatchdog_stop(t *testing.T) {
	t.Run("nil watchdog", func(t *testing.T) {
		var w *watchdog
		require.NotPanics(t, w.stop)
	})
	t.Run("twice", func(t *testing.T) {
		srv, _ := newTestServer(t, newFakeStore(), fastHeartbeat)
		w := srv.startWatchdog(t.Context(), 1, "k", "token", policy{lockTTL: srv.cfg.LockTTL, heartbeat: srv.cfg.Heartbeat})
		w.stop()
		w.stop()
		require.False(t, watchdogRunning(srv))
	})
}
