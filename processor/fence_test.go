package processor

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestServer_Process_fence(t *testing.T) {
	t.Run("each grant sends a growing fence upstream", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		// The first run fails (503: released), the retry is a new grant.
		out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("{}", true), respHeaders(true, ":status", "429"))
		require.NoError(t, err)
		fence, _ := fenceOf(out[1])
		require.Equal(t, "1", fence, "the fence rides on the reply that lets the request go")
		out, err = run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(true, ":status", "200"))
		require.NoError(t, err)
		fence, _ = fenceOf(out[0])
		require.Equal(t, "2", fence)
	})
	t.Run("fail-open strips a fence the client sent", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("acquire", errors.New("redis down"))
		srv, _ := newTestServer(t, store, func(c *Config) { c.FailOpen = true })
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		fence, removed := fenceOf(out[0])
		require.Empty(t, fence)
		require.True(t, removed)
	})
	t.Run("a keyed request of a method outside the allow-list passes without a client fence", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.Methods = []string{"POST"} })
		out, err := run(t, srv, endEOF, keyed("GET", "k", true))
		require.NoError(t, err)
		requireSkipRest(t, out[0].GetModeOverride())
		_, removed := fenceOf(out[0])
		require.True(t, removed)
		require.Empty(t, store.callsOf(""))
	})
	t.Run("an empty fence header name turns fencing off", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.FenceHeader = "" })
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Nil(t, out[0].GetRequestHeaders().GetResponse().GetHeaderMutation())
	})
}

func TestServer_Process_unknownOutcome(t *testing.T) {
	for _, kind := range endKinds {
		t.Run("an unknown outcome is held and refused, ended by "+string(kind), func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			_, err := run(t, srv, kind, keyed("POST", "k", true))
			require.NoError(t, err)
			abandon := store.callsOf("abandon")
			require.Len(t, abandon, 1)
			require.Equal(t, srv.cfg.Retention, abandon[0].ttl, "held for the retention period")
			require.NoError(t, abandon[0].ctxErr, "on a context detached from the stream")

			out, err := run(t, srv, endEOF, keyed("POST", "k", true))
			require.NoError(t, err)
			requireProblem(t, out[0], 409, "outcome-unknown")
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeUnknown))
			require.Len(t, store.callsOf("acquire"), 2, "never a second grant")
		})
	}
	t.Run("with rerun-after-ttl the lock is left to expire", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.OnUnknown = OnUnknownRerunAfterTTL })
		_, err := run(t, srv, endCanceled, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Empty(t, store.callsOf("abandon"))
	})
	t.Run("a mismatching retry of a held key is still a 422", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		_, err := run(t, srv, endCanceled, keyed("POST", "k", false), reqBody("a", true))
		require.NoError(t, err)
		out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("b", true))
		require.NoError(t, err)
		requireProblem(t, out[1], 422, "fingerprint-mismatch")
	})
}
