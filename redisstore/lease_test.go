package redisstore

import (
	"crypto/sha1"
	"encoding/hex"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// acquired acquires key for a fresh token with the default policy and
// returns the token.
func acquired(t *testing.T, s *Store, key string, lockTTL time.Duration) string {
	t.Helper()
	return acquiredWith(t, s, key, lease(lockTTL))
}

// acquiredWith acquires key for a fresh token with lease l.
func acquiredWith(t *testing.T, s *Store, key string, l idem.Lease) string {
	t.Helper()
	tok := token(t)
	acq, err := s.Acquire(t.Context(), key, idem.Claim{Token: tok, Fingerprint: []byte("fp"), Scope: "api.example", Lease: l})
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

	t.Run("owner extends the lease, and the record's hold with it", func(t *testing.T) {
		tok := acquired(t, s, "renew", 10*time.Second)
		before, _ := snapshot(t, s, c, "renew")
		require.NoError(t, s.Renew(t.Context(), "renew", tok, idem.Lease{TTL: time.Minute, Hold: 2 * time.Hour}))
		after, ttl := snapshot(t, s, c, "renew")
		require.Greater(t, ttl, 119*time.Minute, "held for the hold after the renewal")
		require.Greater(t, leaseEnd(t, after)-leaseEnd(t, before), int64(49_000), "the lease end moved on by about 50 s")
		acq, err := s.Acquire(t.Context(), "renew", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateInProgress, acq.State)
		require.Greater(t, acq.LockTTL, 59*time.Second)
	})

	t.Run("with takeover the record lives as long as its lease", func(t *testing.T) {
		tok := acquiredWith(t, s, "renew-takeover", takeover(10*time.Second))
		_, ttl := snapshot(t, s, c, "renew-takeover")
		require.LessOrEqual(t, ttl, 10*time.Second)
		require.NoError(t, s.Renew(t.Context(), "renew-takeover", tok, takeover(time.Minute)))
		_, ttl = snapshot(t, s, c, "renew-takeover")
		require.Greater(t, ttl, 59*time.Second)
		require.LessOrEqual(t, ttl, time.Minute)
	})

	t.Run("wrong token loses the lease and changes nothing", func(t *testing.T) {
		acquired(t, s, "renew-wrong", 10*time.Second)
		before, beforeTTL := snapshot(t, s, c, "renew-wrong")
		err := s.Renew(t.Context(), "renew-wrong", token(t), lease(time.Minute))
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		after, ttl := snapshot(t, s, c, "renew-wrong")
		require.Equal(t, before, after)
		require.LessOrEqual(t, ttl, beforeTTL)
	})

	t.Run("completed record is not renewed", func(t *testing.T) {
		tok := completed(t, s, "renew-done")
		err := s.Renew(t.Context(), "renew-done", tok, lease(24*time.Hour))
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		_, ttl := snapshot(t, s, c, "renew-done")
		require.LessOrEqual(t, ttl, time.Hour)
	})

	t.Run("absent key loses the lease", func(t *testing.T) {
		err := s.Renew(t.Context(), "renew-absent", token(t), lease(time.Minute))
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
		sum := sha1.Sum([]byte(tok))
		require.Equal(t, map[string]string{
			"st": "c", "fp": "fp", "status": "200", "hdr": string(encodeHeaders(nil)), "body": "ok", "bs": "1",
			"ctk": hex.EncodeToString(sum[:]) + ":1",
		}, fields, "the owner token does not outlive the lock, only its digest (then the grant's fence), to recognise a retried completion")
		require.Greater(t, ttl, 59*time.Minute)
		require.LessOrEqual(t, ttl, time.Hour)
	})

	t.Run("wrong token writes nothing", func(t *testing.T) {
		acquired(t, s, "complete-wrong", 10*time.Second)
		before, beforeTTL := snapshot(t, s, c, "complete-wrong")
		err := s.Complete(t.Context(), "complete-wrong", token(t), sampleRecord(), 24*time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		after, ttl := snapshot(t, s, c, "complete-wrong")
		require.Equal(t, before, after)
		require.LessOrEqual(t, ttl, beforeTTL)
	})

	t.Run("a body that never ended is stored as such, without a body", func(t *testing.T) {
		tok := acquired(t, s, "complete-cut", 10*time.Second)
		rec := idem.Record{Fingerprint: []byte("fp"), Status: 201, Body: []byte("part"), Incomplete: true}
		require.NoError(t, s.Complete(t.Context(), "complete-cut", tok, rec, time.Hour))
		fields, _ := snapshot(t, s, c, "complete-cut")
		require.Equal(t, "i", fields["bs"])
		require.Empty(t, fields["body"])
		acq, err := s.Acquire(t.Context(), "complete-cut", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, &idem.Record{Fingerprint: []byte("fp"), Status: 201, Headers: nil, Incomplete: true}, acq.Record)
	})

	t.Run("completed record is never overwritten", func(t *testing.T) {
		tok := completed(t, s, "complete-twice")
		before, _ := snapshot(t, s, c, "complete-twice")
		other := idem.Record{Fingerprint: []byte("fp"), Status: 500, BodyStored: true}
		err := s.Complete(t.Context(), "complete-twice", tok, other, 24*time.Hour)
		require.NoError(t, err, "its owner completed it: a retried completion succeeds, writing nothing")
		require.ErrorIs(t, s.Complete(t.Context(), "complete-twice", token(t), other, 24*time.Hour), idem.ErrLeaseLost)
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

	t.Run("a lease that ran out is an unknown outcome, never a free key", func(t *testing.T) {
		old := acquired(t, s, "vanished", short)
		var acq idem.Acquisition
		require.Eventually(t, func() bool {
			var err error
			acq, err = s.Acquire(t.Context(), "vanished", claim(token(t), []byte("fp"), time.Minute))
			return err == nil && acq.State != idem.StateInProgress
		}, 5*time.Second, 20*time.Millisecond)
		require.Equal(t, idem.StateUnknown, acq.State, "the owner vanished after forwarding: held")
		require.True(t, acq.Expired)
		require.Equal(t, []byte("fp"), acq.Fingerprint)
		require.Greater(t, acq.LockTTL, 59*time.Minute, "held for the rest of the hold")
		fields, _ := snapshot(t, s, c, "vanished")
		require.Equal(t, old, fields["tok"], "nobody took it over")
		require.Equal(t, "1", fields["fence"])

		t.Run("its owner, back in time, may still store the response", func(t *testing.T) {
			require.NoError(t, s.Renew(t.Context(), "vanished", old, lease(short)))
			require.NoError(t, s.Complete(t.Context(), "vanished", old, sampleRecord(), time.Hour))
			acq, err := s.Acquire(t.Context(), "vanished", claim(token(t), sampleRecord().Fingerprint, time.Minute))
			require.NoError(t, err)
			require.Equal(t, idem.StateCompleted, acq.State, "an unknown outcome turned into a replay")
		})
	})

	t.Run("with takeover an expired lock goes to the next request and the old owner writes nothing", func(t *testing.T) {
		old := acquiredWith(t, s, "expire", takeover(short))
		next := token(t)
		require.Eventually(t, func() bool {
			acq, err := s.Acquire(t.Context(), "expire", idem.Claim{Token: next, Fingerprint: []byte("next"), Lease: takeover(time.Minute)})
			return err == nil && acq.State == idem.StateAcquired
		}, 5*time.Second, 20*time.Millisecond)

		err := s.Complete(t.Context(), "expire", old, sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrLeaseLost)
		require.ErrorIs(t, s.Renew(t.Context(), "expire", old, takeover(time.Minute)), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Release(t.Context(), "expire", old), idem.ErrLeaseLost)
		fields, _ := snapshot(t, s, c, "expire")
		require.Equal(t, next, fields["tok"])
		require.Equal(t, "next", fields["fp"])
		require.Equal(t, "2", fields["fence"], "the new owner holds the next fence")
	})

	t.Run("with takeover a lease that ran out in a record still there is taken over", func(t *testing.T) {
		// Written by a default-policy process, read by a takeover one.
		acquired(t, s, "mixed", short)
		require.Eventually(t, func() bool {
			acq, err := s.Acquire(t.Context(), "mixed", idem.Claim{Token: token(t), Fingerprint: []byte("fp"), Lease: takeover(time.Minute)})
			return err == nil && acq.State == idem.StateAcquired
		}, 5*time.Second, 20*time.Millisecond)
	})

	t.Run("with takeover and no new owner the old owner's complete writes nothing after expiry", func(t *testing.T) {
		old := acquiredWith(t, s, "expire-alone", takeover(short))
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

// leaseEnd reads a record's lease end (ms on the Redis clock).
func leaseEnd(t *testing.T, fields map[string]string) int64 {
	t.Helper()
	lx, err := strconv.ParseInt(fields["lx"], 10, 64)
	require.NoError(t, err, "lease end %q", fields["lx"])
	return lx
}
