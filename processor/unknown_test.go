package processor

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gate is a StoreGate the test sets.
type gate struct{ err error }

func (g *gate) Usable(string) error { return g.err }

func TestServer_Process_storeGate(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run("an unsafe store refuses keyed requests, fail-open or not", func(t *testing.T) {
			store := newFakeStore()
			g := &gate{err: errors.New("redis maxmemory-policy is allkeys-lru")}
			srv, reg := newTestServer(t, store, func(c *Config) { c.FailOpen = failOpen })
			srv.gate = g
			out, err := run(t, srv, endEOF, keyed("POST", "k", true))
			require.NoError(t, err)
			_, hs := requireProblem(t, out[0], 503, "store-unavailable")
			require.Equal(t, "1", headerGet(hs, "retry-after"))
			require.Empty(t, store.callsOf(""), "nothing is asked of an unsafe store")
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeStoreUnsafe))

			g.err = nil
			out, err = run(t, srv, endEOF, keyed("POST", "k", true))
			require.NoError(t, err)
			requireContinue(t, out[0])
		})
	}
}

func TestServer_Process_ownerVanished(t *testing.T) {
	t.Run("a lease that ran out without word is an unknown outcome, refused", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, nil)
		// Another process took the key and died: no release, no abandon,
		// no renewal; only its lease runs out.
		store.seedInProgress(keyOf("k"), fingerprint("POST", "/charge?x=1", nil), srv.cfg.LockTTL)
		store.advance(srv.cfg.LockTTL + time.Second)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		p, hs := requireProblem(t, out[0], 409, "outcome-unknown")
		require.Contains(t, p.Detail, "will not run again")
		require.Empty(t, headerGet(hs, "retry-after"), "retrying does not help")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeUnknown))
		require.Len(t, store.callsOf("acquire"), 1)
		e, _ := store.entry(keyOf("k"))
		require.Equal(t, "other", e.token, "never a second grant")
	})
	t.Run("with rerun-after-ttl the next request takes the key over", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.OnUnknown = OnUnknownRerunAfterTTL })
		_, err := run(t, srv, endCanceled, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Empty(t, store.callsOf("abandon"), "the lock is left to expire")
		store.advance(srv.cfg.LockTTL + time.Second)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		requireContinue(t, out[0])
		fence, _ := fenceOf(out[0])
		require.Equal(t, "2", fence, "a new grant")
	})
}

func TestServer_Process_claim(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeHeaders = []string{"x-tenant-id"} })
	_, err := run(t, srv, endEOF, reqHeaders(true, ":method", "POST", ":path", "/", ":authority", "API.example",
		"idempotency-key", "k", "x-tenant-id", "acme"))
	require.NoError(t, err)
	c := store.callsOf("acquire")[0]
	require.Equal(t, srv.cfg.LockTTL, c.lease.TTL)
	require.Equal(t, srv.cfg.Retention, c.lease.Hold, "the record outlives a crashed owner for the retention")
	require.False(t, c.lease.Takeover)
	require.Regexp(t, `^api\.example identity=[0-9a-f]{16}$`, c.scope, "authority in clear, identity hashed")
	require.NotContains(t, c.scope, "acme")
}
