package redisstore

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

func TestStore_scriptCache(t *testing.T) {
	t.Parallel()
	s, c, srv := newTestStore(t)

	t.Run("every method works after SCRIPT FLUSH", func(t *testing.T) {
		require.NoError(t, c.ScriptFlush(t.Context()).Err())
		tok := acquired(t, s, "flush", time.Minute)
		require.NoError(t, c.ScriptFlush(t.Context()).Err())
		require.NoError(t, s.Renew(t.Context(), "flush", tok, lease(time.Minute)))
		require.NoError(t, c.ScriptFlush(t.Context()).Err())
		require.NoError(t, s.Complete(t.Context(), "flush", tok, sampleRecord(), time.Hour))
		require.NoError(t, c.ScriptFlush(t.Context()).Err())
		require.ErrorIs(t, s.Release(t.Context(), "flush", tok), idem.ErrLeaseLost)

		// EVAL caches the script again, so later calls use EVALSHA.
		exists, err := c.ScriptExists(t.Context(), releaseScript.Hash()).Result()
		require.NoError(t, err)
		require.Equal(t, []bool{true}, exists)
	})

	t.Run("the store works against a restarted, empty Redis", func(t *testing.T) {
		acquired(t, s, "restart", time.Minute)
		srv.Restart(t)
		// The pool may hold connections to the old process; the client
		// retries on the broken ones, so the first call can still succeed.
		require.Eventually(t, func() bool {
			acq, err := s.Acquire(t.Context(), "restart", claim(token(t), nil, time.Minute))
			return err == nil && acq.State == idem.StateAcquired
		}, 5*time.Second, 20*time.Millisecond)
	})
}

func TestStore_redisDown(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	// No command retries and one quick dial retry, so the test does not
	// wait through the client's backoff.
	c := redis.NewClient(&redis.Options{
		Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond,
	})
	t.Cleanup(func() { _ = c.Close() })
	s := New(c, Options{})
	tok := acquired(t, s, "down", time.Minute)
	srv.Stop()

	t.Run("every method fails with an error that is not a lost lease", func(t *testing.T) {
		_, err := s.Acquire(t.Context(), "down", claim(tok, nil, time.Minute))
		requireRedisError(t, err, "redisstore: acquire: ")
		requireRedisError(t, s.Renew(t.Context(), "down", tok, lease(time.Minute)), "redisstore: renew: ")
		requireRedisError(t, s.Complete(t.Context(), "down", tok, sampleRecord(), time.Hour), "redisstore: complete: ")
		requireRedisError(t, s.Release(t.Context(), "down", tok), "redisstore: release: ")
	})
}

// requireRedisError checks err reports a failed Redis call, with context.
func requireRedisError(t *testing.T, err error, prefix string) {
	t.Helper()
	require.Error(t, err)
	require.NotErrorIs(t, err, idem.ErrLeaseLost)
	require.ErrorContains(t, err, prefix)
}
