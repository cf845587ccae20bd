package redisstore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// v1 runs the previous version's scripts (testdata/v1, copied from the
// release before leases moved inside the record), to write records exactly
// as a not-yet-upgraded idemproxy does during a rolling upgrade.
type v1 struct {
	t *testing.T
	s *Store
	c *redis.Client
}

func (v v1) run(name string, keys []string, args ...any) any {
	v.t.Helper()
	return runVersion(v.t, v.c, "v1", name, keys, args...)
}

// runVersion runs script name of an earlier version: testdata/v1 (before
// leases moved inside the record) or testdata/v2 (before a completed
// record kept its fence in ctk and wrote enc only when sealed).
func runVersion(t *testing.T, c *redis.Client, version, name string, keys []string, args ...any) any {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", version, name+".lua"))
	require.NoError(t, err)
	out, err := redis.NewScript(string(src)).Run(t.Context(), c, keys, args...).Result()
	require.NoError(t, err)
	return out
}

// acquire takes key the old way: the record's own TTL is the lock.
func (v v1) acquire(key, tok string, fp []byte, lockTTL time.Duration) {
	v.t.Helper()
	rk := v.s.RedisKey(key)
	out := v.run("acquire", []string{rk, rk + fenceSuffix}, tok, fp, lockTTL.Milliseconds(), time.Hour.Milliseconds())
	require.Equal(v.t, "acquired", out.([]any)[0])
}

func TestStore_previousVersionRecords(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	old := v1{t: t, s: s, c: c}

	t.Run("an old in-progress record is in progress for its key's TTL", func(t *testing.T) {
		old.acquire("old-p", token(t), []byte("fp"), 10*time.Second)
		acq, err := s.Acquire(t.Context(), "old-p", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateInProgress, acq.State)
		require.Greater(t, acq.LockTTL, 9*time.Second)
		require.LessOrEqual(t, acq.LockTTL, 10*time.Second)
		require.Zero(t, acq.Running, "an old record has no grant time: how long it ran is not known")
		peeked, err := s.Peek(t.Context(), "old-p")
		require.NoError(t, err)
		require.Zero(t, peeked.Running)
	})

	t.Run("an old lock that expired frees the key, as it did before", func(t *testing.T) {
		old.acquire("old-gone", token(t), []byte("fp"), 100*time.Millisecond)
		require.Eventually(t, func() bool {
			acq, err := s.Acquire(t.Context(), "old-gone", claim(token(t), []byte("fp"), time.Minute))
			return err == nil && acq.State == idem.StateAcquired
		}, 5*time.Second, 20*time.Millisecond)
		fields, _ := snapshot(t, s, c, "old-gone")
		require.Equal(t, "2", fields["fence"], "the fence counter carries on")
	})

	t.Run("an old completed record replays", func(t *testing.T) {
		tok := token(t)
		rec := sampleRecord()
		old.acquire("old-c", tok, rec.Fingerprint, time.Minute)
		rk := s.RedisKey("old-c")
		require.EqualValues(t, 1, old.run("complete", []string{rk}, tok, time.Hour.Milliseconds(), rec.Fingerprint,
			rec.Status, encodeHeaders(rec.Headers), rec.Body, "1", ""))
		acq, err := s.Acquire(t.Context(), "old-c", claim(token(t), rec.Fingerprint, time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, &rec, acq.Record)
		info, err := s.Inspect(t.Context(), "old-c")
		require.NoError(t, err)
		require.Zero(t, info.UpstreamAttempts, "an old record has no attempt count: one attempt, or not known")
	})

	t.Run("a new record marked with upstream attempts replays with the old scripts and inspects with the new", func(t *testing.T) {
		rec := sampleRecord()
		rec.Fingerprint = []byte("fp")
		rec.UpstreamAttempts = 2
		tok := acquired(t, s, "new-ua", time.Minute)
		require.NoError(t, s.Complete(t.Context(), "new-ua", tok, rec, time.Hour))
		rk := s.RedisKey("new-ua")
		out := old.run("acquire", []string{rk, rk + fenceSuffix}, token(t), rec.Fingerprint, time.Minute.Milliseconds(), time.Hour.Milliseconds())
		require.Equal(t, []any{"completed", "fp", "201", string(encodeHeaders(rec.Headers)), string(rec.Body), "1", ""}, out)
		acq, err := s.Acquire(t.Context(), "new-ua", claim(token(t), rec.Fingerprint, time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		rec.UpstreamAttempts = 0 // kept for operators, not read back on replay
		require.Equal(t, &rec, acq.Record)
		info, err := s.Inspect(t.Context(), "new-ua")
		require.NoError(t, err)
		require.Equal(t, 2, info.UpstreamAttempts)
	})

	t.Run("an old held unknown outcome stays refused", func(t *testing.T) {
		tok := token(t)
		old.acquire("old-u", tok, []byte("fp"), time.Minute)
		require.EqualValues(t, 1, old.run("abandon", []string{s.RedisKey("old-u")}, tok, time.Hour.Milliseconds()))
		acq, err := s.Acquire(t.Context(), "old-u", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateUnknown, acq.State)
		require.False(t, acq.Expired)
	})

	t.Run("the old scripts never take a new record that ran out of lease", func(t *testing.T) {
		// A not-yet-upgraded replica meets a crashed new owner's record:
		// it answers in progress (409) for the hold, never runs the key.
		acquired(t, s, "new-p", 100*time.Millisecond)
		require.Eventually(t, func() bool {
			acq, err := s.Acquire(t.Context(), "new-p", claim(token(t), []byte("fp"), time.Minute))
			return err == nil && acq.State == idem.StateUnknown
		}, 5*time.Second, 20*time.Millisecond)
		rk := s.RedisKey("new-p")
		out := old.run("acquire", []string{rk, rk + fenceSuffix}, token(t), []byte("fp"), time.Minute.Milliseconds(), time.Hour.Milliseconds())
		require.Equal(t, "in_progress", out.([]any)[0])
	})
	t.Run("a completion the previous version wrote is known to its retry, replays and shows its fence", func(t *testing.T) {
		// testdata/v2's record: field fence, field enc "", ctk the digest alone.
		tok := acquired(t, s, "v2-c", time.Minute)
		rec := sampleRecord()
		rk := s.RedisKey("v2-c")
		require.EqualValues(t, 1, runVersion(t, c, "v2", "complete", []string{rk}, tok, time.Hour.Milliseconds(),
			rec.Fingerprint, rec.Status, encodeHeaders(rec.Headers), rec.Body, "1", "", rk+settledSuffix, ""))
		fields, _ := snapshot(t, s, c, "v2-c")
		require.Equal(t, "1", fields["fence"])
		require.Len(t, fields["ctk"], 40)
		require.NoError(t, s.Complete(t.Context(), "v2-c", tok, rec, time.Hour), "a retried completion: completed before")
		require.ErrorIs(t, s.Complete(t.Context(), "v2-c", token(t), rec, time.Hour), idem.ErrLeaseLost)
		info, err := s.Inspect(t.Context(), "v2-c")
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted.String(), info.State)
		require.EqualValues(t, 1, info.Fence)
		acq, err := s.Acquire(t.Context(), "v2-c", claim(token(t), rec.Fingerprint, time.Minute))
		require.NoError(t, err)
		require.Equal(t, &rec, acq.Record)
	})

	t.Run("a completion of this version shows its fence, kept in ctk", func(t *testing.T) {
		acquired(t, s, "v3-c", time.Minute)
		_, err := s.Delete(t.Context(), "v3-c") // the counter stays: the next grant is fence 2
		require.NoError(t, err)
		tok := acquired(t, s, "v3-c", time.Minute)
		require.NoError(t, s.Complete(t.Context(), "v3-c", tok, sampleRecord(), time.Hour))
		fields, _ := snapshot(t, s, c, "v3-c")
		require.NotContains(t, fields, "fence")
		require.NotContains(t, fields, "enc", "a plain record has no enc: readers take its absence for plain")
		info, err := s.Inspect(t.Context(), "v3-c")
		require.NoError(t, err)
		require.EqualValues(t, 2, info.Fence)
		require.EqualValues(t, 2, info.LastFence)
		require.NoError(t, s.Complete(t.Context(), "v3-c", tok, sampleRecord(), time.Hour), "a retried completion: completed before")
	})
}
