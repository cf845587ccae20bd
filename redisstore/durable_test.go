package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestStore_durable asks a Redis without replicas for one: the lock is
// taken but reported unreplicated after the replica timeout, and so is a
// completion, which is written all the same.
func TestStore_durable(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	c := srv.Client(t)
	s := New(c, Options{MinReplicas: 1, ReplicaTimeout: 50 * time.Millisecond})

	t.Run("an acquire no replica acknowledged is an error; the lock exists", func(t *testing.T) {
		tok := token(t)
		start := time.Now()
		_, err := s.Acquire(t.Context(), "k", claim(tok, []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		require.ErrorContains(t, err, "0 of 1 replicas")
		require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond, "WAIT waited its timeout")
		st, err := c.HGet(t.Context(), s.RedisKey("k"), "st").Result()
		require.NoError(t, err)
		require.Equal(t, "p", st, "the caller must release it")
		require.NoError(t, s.Release(t.Context(), "k", tok), "releasing does not wait")
	})
	t.Run("a retried acquire with the same token gets its own lock back", func(t *testing.T) {
		tok := token(t)
		_, err := s.Acquire(t.Context(), "again", claim(tok, []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		_, err = s.Acquire(t.Context(), "again", claim(tok, []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated, "still ours, still unreplicated")
		plain := New(c, Options{})
		acq, err := plain.Acquire(t.Context(), "again", claim(tok, []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateAcquired, acq.State)
		require.EqualValues(t, 1, acq.Fence, "the same grant, not a new one")
	})
	t.Run("a completion no replica acknowledged is stored and reported", func(t *testing.T) {
		plain := New(c, Options{})
		tok := acquired(t, plain, "done", time.Minute)
		err := s.Complete(t.Context(), "done", tok, sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		acq, err := s.Acquire(t.Context(), "done", claim(token(t), sampleRecord().Fingerprint, time.Minute))
		require.NoError(t, err, "an existing record needs no replicas")
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, sampleRecord().Body, acq.Record.Body)
	})
	t.Run("renewals do not wait; a lost lease is a lost lease", func(t *testing.T) {
		plain := New(c, Options{})
		tok := acquired(t, plain, "renew", time.Minute)
		start := time.Now()
		require.NoError(t, s.Renew(t.Context(), "renew", tok, lease(time.Minute)))
		require.Less(t, time.Since(start), 45*time.Millisecond)
		require.ErrorIs(t, s.Complete(t.Context(), "renew", token(t), sampleRecord(), time.Hour), idem.ErrLeaseLost)
	})
	t.Run("NOSCRIPT inside the pipeline falls back to EVAL", func(t *testing.T) {
		require.NoError(t, c.ScriptFlush(t.Context()).Err())
		_, err := s.Acquire(t.Context(), "flushed", claim(token(t), []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated, "the script ran")
		exists, err := c.ScriptExists(t.Context(), acquireScript.Hash()).Result()
		require.NoError(t, err)
		require.Equal(t, []bool{true}, exists, "EVAL cached it again")
	})
}

// TestStore_sentinel runs durable writes through a Sentinel-aware client:
// both replicas acknowledge, and after the primary's SIGKILL the client
// follows the new primary, where the acknowledged records are.
func TestStore_sentinel(t *testing.T) {
	t.Parallel()
	st := redistopo.NewSentinel(t)
	c := st.Client(t)
	s := New(c, Options{MinReplicas: 2, ReplicaTimeout: time.Second})
	tok := acquired(t, s, "locked", time.Minute)
	completed(t, s, "done")

	old, err := st.Primary(t.Context())
	require.NoError(t, err)
	st.Kill(old)
	_, err = st.WaitFailover(t.Context(), old)
	require.NoError(t, err)
	one := New(c, Options{MinReplicas: 1, ReplicaTimeout: time.Second})
	var acq idem.Acquisition
	require.Eventually(t, func() bool {
		acq, err = one.Acquire(t.Context(), "done", claim(token(t), sampleRecord().Fingerprint, time.Minute))
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "the client follows the new primary: %v", err)
	require.Equal(t, idem.StateCompleted, acq.State, "the acknowledged response survived the failover")
	require.NoError(t, one.Complete(t.Context(), "locked", tok, sampleRecord(), time.Hour),
		"the acknowledged lock survived too, still ours; one replica is left to acknowledge")
}
