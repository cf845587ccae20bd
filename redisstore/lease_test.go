package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// acquired acquires key for a fresh token and returns the token.
func acquired(t *testing.T, s *Store, key string, lockTTL time.Duration) string {
	t.Helper()
	tok := token(t)
	acq, err := s.Acquire(t.Context(), key, tok, []byte("fp"), lockTTL)
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State)
	return tok
}

// completed acquires and completes key, and returns the owner token.
func completed(t *testing.T, s *Store, key string) string {
	t.Helper()
	tok := acquired(t, s, key, time.Minute)
	require.NoError(t, s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour))
	return tok
}

func TestStore_Renew(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)

	t.Run("owner extends the lock", func(t *testing.T) {
		tok := acquired(t, s, "renew", 10*time.Second)
		require.NoError(t, s.Renew(t.Context(), "renew", tok, time.Minute))
		_, ttl := snapshot(t, s, c, "renew")
		require.Greater(t, ttl, 59*time.Second)
	})

	t.Run("wrong token loses the lease and changes nothing", func(t *testing.T) {
		acquired(t, s, "renew-wrong", 10*time.Second)
		before, _ := snapshot(t, s, c, "renew-wrong")
		err := s.Renew(t.Context(), "renew-wrong", token(t), time.Minute)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		after, ttl := snapshot(t, s, c, "renew-wrong")
		require.Equal(t, before, after)
		require.LessOrEqual(t, ttl, 10*time.Second)
	})

	t.Run("completed record is not renewed", func(t *testing.T) {
		tok := completed(t, s, "renew-done")
		err := s.Renew(t.Context(), "renew-done", tok, 24*time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		_, ttl := snapshot(t, s, c, "renew-done")
		require.LessOrEqual(t, ttl, time.Hour)
	})

	t.Run("absent key loses the lease", func(t *testing.T) {
		err := s.Renew(t.Context(), "renew-absent", token(t), time.Minute)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
	})
}

func TestStore_Complete(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)

	t.Run("owner stores the response for the retention period", func(t *testing.T) {
		tok := acquired(t, s, "complete", 10*time.Second)
		rec := idem.Record{Fingerprint: []byte("fp"), Status: 200, Body: []byte("ok"), BodyStored: true}
		require.NoError(t, s.Complete(t.Context(), "complete", tok, rec, time.Hour))

		fields, ttl := snapshot(t, s, c, "complete")
		require.Equal(t, map[string]string{
			"st": "c", "fp": "fp", "status": "200", "hdr": string(encodeHeaders(nil)), "body": "ok", "bs": "1", "enc": "", "fence": "1",
		}, fields, "the owner token must not outlive the lock")
		require.Greater(t, ttl, 59*time.Minute)
		require.LessOrEqual(t, ttl, time.Hour)
	})

	t.Run("wrong token writes nothing", func(t *testing.T) {
		acquired(t, s, "complete-wrong", 10*time.Second)
		before, _ := snapshot(t, s, c, "complete-wrong")
		err := s.Complete(t.Context(), "complete-wrong", token(t), sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		after, ttl := snapshot(t, s, c, "complete-wrong")
		require.Equal(t, before, after)
		require.LessOrEqual(t, ttl, 10*time.Second)
	})

	t.Run("completed record is never overwritten", func(t *testing.T) {
		tok := completed(t, s, "complete-twice")
		before, _ := snapshot(t, s, c, "complete-twice")
		other := idem.Record{Fingerprint: []byte("fp"), Status: 500, BodyStored: true}
		err := s.Complete(t.Context(), "complete-twice", tok, other, 24*time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		after, ttl := snapshot(t, s, c, "complete-twice")
		require.Equal(t, before, after)
		require.LessOrEqual(t, ttl, time.Hour)
	})

	t.Run("absent key writes nothing", func(t *testing.T) {
		err := s.Complete(t.Context(), "complete-absent", token(t), sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		n, err := c.Exists(t.Context(), s.RedisKey("complete-absent")).Result()
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

func TestStore_Release(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)

	t.Run("owner deletes the record so the key is free again", func(t *testing.T) {
		tok := acquired(t, s, "release", time.Minute)
		require.NoError(t, s.Release(t.Context(), "release", tok))
		acquired(t, s, "release", time.Minute)
	})

	t.Run("wrong token deletes nothing", func(t *testing.T) {
		acquired(t, s, "release-wrong", time.Minute)
		before, _ := snapshot(t, s, c, "release-wrong")
		require.ErrorIs(t, s.Release(t.Context(), "release-wrong", token(t)), idem.ErrLeaseLost)
		after, _ := snapshot(t, s, c, "release-wrong")
		require.Equal(t, before, after)
	})

	t.Run("completed record is not deleted", func(t *testing.T) {
		tok := completed(t, s, "release-done")
		require.ErrorIs(t, s.Release(t.Context(), "release-done", tok), idem.ErrLeaseLost)
		fields, _ := snapshot(t, s, c, "release-done")
		require.Equal(t, "c", fields["st"])
	})
}

func TestStore_expiry(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	const short = 200 * time.Millisecond

	t.Run("an expired lock goes to the next request and the old owner writes nothing", func(t *testing.T) {
		old := acquired(t, s, "expire", short)
		next := token(t)
		require.Eventually(t, func() bool {
			acq, err := s.Acquire(t.Context(), "expire", next, []byte("next"), time.Minute)
			return err == nil && acq.State == idem.StateAcquired
		}, 5*time.Second, 20*time.Millisecond)

		err := s.Complete(t.Context(), "expire", old, sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		require.ErrorIs(t, s.Renew(t.Context(), "expire", old, time.Minute), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Release(t.Context(), "expire", old), idem.ErrLeaseLost)
		fields, _ := snapshot(t, s, c, "expire")
		require.Equal(t, map[string]string{"st": "p", "tok": next, "fp": "next", "fence": "2"}, fields,
			"the new owner holds the next fence")
	})

	t.Run("after expiry with no new owner the old owner's complete writes nothing", func(t *testing.T) {
		old := acquired(t, s, "expire-alone", short)
		require.Eventually(t, func() bool {
			n, err := c.Exists(t.Context(), s.RedisKey("expire-alone")).Result()
			return err == nil && n == 0
		}, 5*time.Second, 20*time.Millisecond)

		err := s.Complete(t.Context(), "expire-alone", old, sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		n, err := c.Exists(t.Context(), s.RedisKey("expire-alone")).Result()
		require.NoError(t, err)
		require.Zero(t, n)
	})
}
