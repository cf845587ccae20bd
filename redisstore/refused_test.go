package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// An acquire Redis refused with an error reply, or that could not even be
// sent, wrote nothing: it says so (idem.ErrNotTaken), so the processor
// gives back no lock and logs none. One that timed out may have run: it
// does not say so.
func TestStore_Acquire_refusedOutright(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)

	t.Run("out of memory: not taken, and nothing written", func(t *testing.T) {
		require.NoError(t, c.ConfigSet(t.Context(), "maxmemory-policy", "noeviction").Err())
		require.NoError(t, c.ConfigSet(t.Context(), "maxmemory", "1").Err())
		t.Cleanup(func() { _ = c.ConfigSet(t.Context(), "maxmemory", "0").Err() })
		_, err := s.Acquire(t.Context(), "oom", claim(token(t), nil, time.Minute))
		require.ErrorIs(t, err, idem.ErrNotTaken)
		require.ErrorContains(t, err, "OOM")
		n, err := c.Exists(t.Context(), s.RedisKey("oom")).Result()
		require.NoError(t, err)
		require.Zero(t, n)
	})

	t.Run("a stopped Redis (connection refused): never sent, not taken", func(t *testing.T) {
		srv := redistopo.Start(t)
		dc := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
		t.Cleanup(func() { _ = dc.Close() })
		ds := New(dc, Options{})
		acquired(t, ds, "warm", time.Minute) // a pooled connection, to the Redis about to stop
		srv.Stop()
		_, err := ds.Acquire(t.Context(), "down", claim(token(t), nil, time.Minute))
		require.ErrorIs(t, err, idem.ErrNotTaken)
	})
	t.Run("a frozen Redis (timeout): maybe taken", func(t *testing.T) {
		srv := redistopo.Start(t)
		dc := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = dc.Close() })
		ds := New(dc, Options{})
		acquired(t, ds, "warm", time.Minute)
		require.NoError(t, srv.Pause())
		t.Cleanup(func() { _ = srv.Resume() })
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		_, err := ds.Acquire(ctx, "frozen", claim(token(t), nil, time.Minute))
		require.Error(t, err)
		require.NotErrorIs(t, err, idem.ErrNotTaken)
	})
}

// A response that was seen but could not be stored in time is completed
// with its status only (bs "s"), and read back as such.
func TestStore_Complete_storeFailed(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	tok := acquired(t, s, "sf", time.Minute)
	rec := sampleRecord()
	rec.BodyStored, rec.StoreFailed = false, true
	require.NoError(t, s.Complete(t.Context(), "sf", tok, rec, time.Hour))
	bs, err := c.HGet(t.Context(), s.RedisKey("sf"), "bs").Result()
	require.NoError(t, err)
	require.Equal(t, "s", bs)
	acq, err := s.Acquire(t.Context(), "sf", claim(token(t), rec.Fingerprint, time.Minute))
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, acq.State)
	require.True(t, acq.Record.StoreFailed)
	require.False(t, acq.Record.BodyStored)
	require.Empty(t, acq.Record.Body)
	require.Equal(t, rec.Status, acq.Record.Status)
}

// A version that knows no "s" fails closed on it: parseRecord refuses an
// unknown body-stored code as a corrupt record, which the processor
// answers with 503 (never a run). This is the rule any future code
// relies on.
func TestParseRecord_unknownBodyCode(t *testing.T) {
	t.Parallel()
	plain := func(_, _ string, b []byte) ([]byte, error) { return b, nil }
	_, err := parseRecord([]any{"fp", "200", "", "", "x", ""}, plain)
	require.ErrorIs(t, err, ErrCorruptRecord)
}
