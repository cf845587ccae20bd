package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestStore_Acquire_fence(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	ctx := t.Context()

	t.Run("the fence grows with every grant, across release and expiry", func(t *testing.T) {
		var fences []int64
		for i := range 3 {
			tok := token(t)
			acq, err := s.Acquire(ctx, "grants", claim(tok, []byte("fp"), time.Second))
			require.NoError(t, err)
			require.Equal(t, idem.StateAcquired, acq.State, "grant %d", i)
			fences = append(fences, acq.Fence)
			if i == 0 {
				require.NoError(t, s.Release(ctx, "grants", tok))
			} else {
				require.NoError(t, c.Del(ctx, s.RedisKey("grants")).Err(), "as if the lock expired")
			}
		}
		require.Equal(t, []int64{1, 2, 3}, fences)
	})
	t.Run("the counter shares the record's hash tag and has a TTL", func(t *testing.T) {
		_, err := s.Acquire(ctx, "tagged", claim(token(t), []byte("fp"), time.Second))
		require.NoError(t, err)
		counter := s.RedisKey("tagged") + fenceSuffix
		require.Contains(t, counter, s.RedisKey("tagged")[len(DefaultPrefix):])
		ttl, err := c.PTTL(ctx, counter).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, DefaultFenceTTL-time.Minute)
	})
	t.Run("the counter outlives a route's longer retention", func(t *testing.T) {
		long := idem.Claim{Token: token(t), Fingerprint: []byte("fp"), Lease: idem.Lease{TTL: time.Second, Hold: 30 * 24 * time.Hour}}
		_, err := s.Acquire(ctx, "kept-long", long)
		require.NoError(t, err)
		ttl, err := c.PTTL(ctx, s.RedisKey("kept-long")+fenceSuffix).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, 60*24*time.Hour-time.Minute, "twice the record's hold")
	})
	t.Run("a refused acquire takes no fence", func(t *testing.T) {
		tok := token(t)
		first, err := s.Acquire(ctx, "held", claim(tok, []byte("fp"), time.Minute))
		require.NoError(t, err)
		_, err = s.Acquire(ctx, "held", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.NoError(t, s.Release(ctx, "held", tok))
		next, err := s.Acquire(ctx, "held", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, first.Fence+1, next.Fence)
	})
}

func TestStore_Abandon(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	ctx := t.Context()

	t.Run("the owner marks the key outcome unknown for the hold period", func(t *testing.T) {
		tok := token(t)
		_, err := s.Acquire(ctx, "unknown", claim(tok, []byte("fp"), time.Second))
		require.NoError(t, err)
		require.NoError(t, s.Abandon(ctx, "unknown", tok, time.Hour))
		fields, ttl := snapshot(t, s, c, "unknown")
		require.Equal(t, "u", fields["st"])
		require.NotContains(t, fields, "tok", "no one owns an abandoned key")
		require.Greater(t, ttl, time.Hour-time.Minute)

		acq, err := s.Acquire(ctx, "unknown", claim(token(t), []byte("fp"), time.Second))
		require.NoError(t, err)
		require.Equal(t, idem.StateUnknown, acq.State)
		require.Equal(t, []byte("fp"), acq.Fingerprint)
		require.ErrorIs(t, s.Abandon(ctx, "unknown", tok, time.Hour), idem.ErrLeaseLost, "once only")
	})
	t.Run("another token cannot abandon the key", func(t *testing.T) {
		tok := token(t)
		_, err := s.Acquire(ctx, "owned", claim(tok, []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.ErrorIs(t, s.Abandon(ctx, "owned", token(t), time.Hour), idem.ErrLeaseLost)
		fields, _ := snapshot(t, s, c, "owned")
		require.Equal(t, "p", fields["st"])
	})
	t.Run("a completed key is never abandoned", func(t *testing.T) {
		tok := token(t)
		_, err := s.Acquire(ctx, "done", claim(tok, []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.NoError(t, s.Complete(ctx, "done", tok, sampleRecord(), time.Hour))
		require.ErrorIs(t, s.Abandon(ctx, "done", tok, time.Hour), idem.ErrLeaseLost)
	})
}

func TestStore_InspectDelete(t *testing.T) {
	t.Parallel()
	s, _, _ := newTestStore(t)
	ctx := t.Context()

	info, err := s.Inspect(ctx, "absent")
	require.NoError(t, err)
	require.Equal(t, KeyInfo{}, info)

	tok := token(t)
	_, err = s.Acquire(ctx, "k", claim(tok, []byte("fp"), time.Minute))
	require.NoError(t, err)
	info, err = s.Inspect(ctx, "k")
	require.NoError(t, err)
	require.True(t, info.Exists)
	require.Equal(t, "in_progress", info.State)
	require.EqualValues(t, 1, info.Fence)
	require.Greater(t, info.TTL, 50*time.Second)

	rec := sampleRecord()
	require.NoError(t, s.Complete(ctx, "k", tok, rec, time.Hour))
	info, err = s.Inspect(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "completed", info.State)
	require.Equal(t, rec.Status, info.Status)
	require.True(t, info.BodyStored)
	require.EqualValues(t, len(rec.Body), info.BodyBytes)

	deleted, err := s.Delete(ctx, "k")
	require.NoError(t, err)
	require.True(t, deleted)
	deleted, err = s.Delete(ctx, "k")
	require.NoError(t, err)
	require.False(t, deleted)
	info, err = s.Inspect(ctx, "k")
	require.NoError(t, err)
	require.False(t, info.Exists)
	require.EqualValues(t, 1, info.LastFence, "deleting a record keeps its fence counter")
}
