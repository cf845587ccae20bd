package redisstore

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// promptedWithin reports whether ch fires within d (it never fails the
// test itself, so it may run anywhere).
func promptedWithin(ch <-chan time.Time, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// waitedOn makes key's in-progress record known to be waited on, as a
// waiting duplicate's acquire does (its settlement then publishes).
func waitedOn(t *testing.T, s *Store, key string) {
	t.Helper()
	c := claim(token(t), sampleRecord().Fingerprint, time.Minute)
	c.Wait = true
	acq, err := s.Acquire(t.Context(), key, c)
	require.NoError(t, err)
	require.Equal(t, idem.StateInProgress, acq.State)
}

func TestWatcher(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	// A recheck far beyond the test: every prompt seen here is a notice
	// or a subscription, except in the recheck subtest's own watcher.
	w := s.NewWatcher(ctx, c, slog.New(slog.NewTextHandler(io.Discard, nil)), WatcherOptions{Recheck: time.Hour})
	t.Cleanup(func() { cancel(); w.Close() })
	subscribers := func(key string) int64 {
		n, err := c.PubSubShardNumSub(t.Context(), s.RedisKey(key)+settledSuffix).Result()
		require.NoError(t, err)
		return n[s.RedisKey(key)+settledSuffix]
	}
	// watch registers a waiter and takes the prompt of its subscription
	// becoming active (the first waiter of a key only).
	watch := func(key string, first bool) (<-chan time.Time, func()) {
		t.Helper()
		wake, stop, err := w.Watch(t.Context(), key, time.Now())
		require.NoError(t, err)
		if first {
			require.True(t, promptedWithin(wake, 5*time.Second), "the subscription's confirmation prompts a look")
			require.EqualValues(t, 1, subscribers(key))
		}
		return wake, stop
	}

	for name, settle := range map[string]func(key, tok string) error{
		"complete": func(key, tok string) error { return s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour) },
		"release":  func(key, tok string) error { return s.Release(t.Context(), key, tok) },
		"abandon":  func(key, tok string) error { return s.Abandon(t.Context(), key, tok, time.Hour) },
	} {
		t.Run("waiters hear of a "+name, func(t *testing.T) {
			key := "watch-" + name
			tok := acquired(t, s, key, time.Minute)
			waitedOn(t, s, key)
			a, stopA := watch(key, true)
			defer stopA()
			b, stopB := watch(key, false)
			defer stopB()
			require.EqualValues(t, 1, subscribers(key), "one subscription for both")
			require.False(t, promptedWithin(a, 50*time.Millisecond), "nothing yet")
			require.NoError(t, settle(key, tok))
			require.True(t, promptedWithin(a, 5*time.Second))
			require.True(t, promptedWithin(b, 5*time.Second))
		})
	}
	t.Run("a settlement heard after the caller's look prompts a later waiter at once", func(t *testing.T) {
		key := "watch-late"
		tok := acquired(t, s, key, time.Minute)
		waitedOn(t, s, key)
		a, stopA := watch(key, true)
		defer stopA()
		looked := time.Now() // the second waiter's acquire, still in progress
		require.NoError(t, s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour))
		require.True(t, promptedWithin(a, 5*time.Second))
		// It registers only now, after the notice came.
		b, stopB, err := w.Watch(t.Context(), key, looked)
		require.NoError(t, err)
		defer stopB()
		require.True(t, promptedWithin(b, 0), "prompted at registration")
		c, stopC, err := w.Watch(t.Context(), key, time.Now())
		require.NoError(t, err)
		defer stopC()
		require.False(t, promptedWithin(c, 50*time.Millisecond), "a waiter who looked after the notice is not")
	})
	t.Run("a key nobody said it waits for is settled without a notice", func(t *testing.T) {
		key := "watch-unmarked"
		tok := acquired(t, s, key, time.Minute)
		a, stop := watch(key, true)
		defer stop()
		require.NoError(t, s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour))
		require.False(t, promptedWithin(a, 200*time.Millisecond), "no SPUBLISH: the recheck is what would find it")
	})
	t.Run("a peek marks the key it finds in progress: its settlement is announced", func(t *testing.T) {
		// A waiter peeks at a new owner, whose own acquire marked nothing.
		key := "watch-peeked"
		tok := acquired(t, s, key, time.Minute)
		a, stop := watch(key, true)
		defer stop()
		acq, err := s.Peek(t.Context(), key)
		require.NoError(t, err)
		require.Equal(t, idem.StateInProgress, acq.State)
		require.NoError(t, s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour))
		require.True(t, promptedWithin(a, 5*time.Second), "the completion published")
	})
	t.Run("other keys' settlements wake nobody, and the last stop unsubscribes", func(t *testing.T) {
		mine, stop := watch("watch-mine", true)
		tok := acquired(t, s, "watch-other", time.Minute)
		waitedOn(t, s, "watch-other")
		require.NoError(t, s.Release(t.Context(), "watch-other", tok))
		require.False(t, promptedWithin(mine, 200*time.Millisecond))
		stop()
		testenv.WaitFor(t, 5*time.Second, "the unsubscription", func() bool { return subscribers("watch-mine") == 0 })
	})
	t.Run("the recheck prompts every waiter, notice or not", func(t *testing.T) {
		rctx, rcancel := context.WithCancel(t.Context())
		rw := s.NewWatcher(rctx, c, slog.New(slog.NewTextHandler(io.Discard, nil)), WatcherOptions{Recheck: 100 * time.Millisecond})
		defer func() { rcancel(); rw.Close() }()
		wake, stop, err := rw.Watch(t.Context(), "watch-recheck", time.Now())
		require.NoError(t, err)
		defer stop()
		for range 3 {
			require.True(t, promptedWithin(wake, 5*time.Second))
		}
	})
	t.Run("a Watch after the context ended is refused", func(t *testing.T) {
		dctx, dcancel := context.WithCancel(t.Context())
		dw := s.NewWatcher(dctx, c, slog.New(slog.NewTextHandler(io.Discard, nil)), WatcherOptions{})
		dcancel()
		_, _, err := dw.Watch(t.Context(), "watch-done", time.Now())
		require.ErrorIs(t, err, context.Canceled)
		dw.Close()
	})
}

// TestStore_settleWithoutChannelACL: an ACL user that may use the records
// but not their channels (no &prefix*) still settles waited-on keys: the
// notice is lost, the write is not.
func TestStore_settleWithoutChannelACL(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	require.NoError(t, srv.Client(t).Do(t.Context(), "ACL", "SETUSER", "nochan", "reset", "on", ">pw",
		"~idemproxy:*", "+@all").Err())
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "nochan", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	s := New(c, Options{})
	require.ErrorContains(t, c.SPublish(t.Context(), s.RedisKey("k")+settledSuffix, "x").Err(), "NOPERM",
		"the user really may not publish")

	for name, settle := range map[string]func(key, tok string) error{
		"complete": func(key, tok string) error { return s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour) },
		"release":  func(key, tok string) error { return s.Release(t.Context(), key, tok) },
		"abandon":  func(key, tok string) error { return s.Abandon(t.Context(), key, tok, time.Hour) },
	} {
		t.Run(name, func(t *testing.T) {
			key := "nochan-" + name
			tok := acquired(t, s, key, time.Minute)
			waitedOn(t, s, key)
			require.NoError(t, settle(key, tok))
			acq, err := s.Acquire(t.Context(), key, claim(token(t), sampleRecord().Fingerprint, time.Minute))
			require.NoError(t, err)
			want := map[string]idem.State{"complete": idem.StateCompleted, "release": idem.StateAcquired,
				"abandon": idem.StateUnknown}[name]
			require.Equal(t, want, acq.State, "settled as asked")
		})
	}
}
