package processor

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// TestServer_acquireRefused_logs: the log says only what happened. An
// acquire Redis refused outright (an error reply: OOM, READONLY...) took
// no lock: nothing is given back and no line speaks of one. One that timed
// out may have taken a lock: it is given back, and if that fails too the
// line says the acquire's result is unknown, not that the key is lost.
func TestServer_acquireRefused_logs(t *testing.T) {
	oom := fmt.Errorf("redisstore: acquire: %w: %w", idem.ErrNotTaken, errors.New("OOM command not allowed when used memory > 'maxmemory'"))
	timeout := fmt.Errorf("redisstore: acquire: %w", context.DeadlineExceeded)

	t.Run("refused outright: no release, no word of a lock", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("acquire", oom)
		srv, _, logs := newLoggedServer(t, store, pendingConfig)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		requireProblem(t, out[0], 503, "store-unavailable")
		require.Equal(t, []string{"acquire"}, store.ops())
		require.Contains(t, logs.String(), "store failed; request refused (fail-closed)")
		require.NotContains(t, logs.String(), "releas")
		require.NotContains(t, logs.String(), "giving back")
		require.NotContains(t, logs.String(), "unknown outcome")
	})
	t.Run("timed out, and the release fails: the line says the result is unknown", func(t *testing.T) {
		store := newFakeStore()
		store.failWith(map[string]error{"acquire": timeout, "release": errRedisDown})
		srv, _, logs := newLoggedServer(t, store, pendingConfig)
		_, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Contains(t, store.ops(), "release")
		require.Contains(t, logs.String(), "an acquire failed without saying whether it took the lock")
		require.NotContains(t, logs.String(), "releasing the lock failed")
		require.NotContains(t, logs.String(), "until its lease ended")
	})
	t.Run("timed out, and it had taken no lock", func(t *testing.T) {
		store := newFakeStore()
		store.failWith(map[string]error{"acquire": timeout})
		srv, _, logs := newLoggedServer(t, store, pendingConfig)
		_, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Contains(t, logs.String(), "the failed acquire had taken no lock")
		require.NotContains(t, logs.String(), "level=ERROR msg=\"releasing")
	})
}
