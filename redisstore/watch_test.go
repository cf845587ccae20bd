package redisstore

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

func TestWatcher(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	w := s.NewWatcher(ctx, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { cancel(); w.Close() })
	// settledWithin reports whether ch fires within d (it never fails the
	// test itself, so it may run anywhere).
	settledWithin := func(ch <-chan struct{}, d time.Duration) bool {
		select {
		case <-ch:
			return true
		case <-time.After(d):
			return false
		}
	}
	subscribed := func(key string) {
		t.Helper()
		testenv.WaitFor(t, 5*time.Second, "the subscription", func() bool {
			n, err := c.PubSubShardNumSub(t.Context(), s.RedisKey(key)+settledSuffix).Result()
			return err == nil && n[s.RedisKey(key)+settledSuffix] == 1
		})
	}

	for name, settle := range map[string]func(key, tok string) error{
		"complete": func(key, tok string) error { return s.Complete(t.Context(), key, tok, sampleRecord(), time.Hour) },
		"release":  func(key, tok string) error { return s.Release(t.Context(), key, tok) },
		"abandon":  func(key, tok string) error { return s.Abandon(t.Context(), key, tok, time.Hour) },
	} {
		t.Run("waiters hear of a "+name, func(t *testing.T) {
			key := "watch-" + name
			tok := acquired(t, s, key, time.Minute)
			a, freshA, stopA, err := w.Watch(t.Context(), key)
			require.NoError(t, err)
			defer stopA()
			b, freshB, stopB, err := w.Watch(t.Context(), key)
			require.NoError(t, err)
			defer stopB()
			require.True(t, freshA, "the first waiter subscribes")
			require.False(t, freshB, "the second shares the subscription")
			subscribed(key)
			require.False(t, settledWithin(a, 50*time.Millisecond), "nothing yet")
			require.NoError(t, settle(key, tok))
			require.True(t, settledWithin(a, 5*time.Second))
			require.True(t, settledWithin(b, 5*time.Second))
		})
	}
	t.Run("other keys' settlements wake nobody, and the last stop unsubscribes", func(t *testing.T) {
		mine, _, stop, err := w.Watch(t.Context(), "watch-mine")
		require.NoError(t, err)
		subscribed("watch-mine")
		tok := acquired(t, s, "watch-other", time.Minute)
		require.NoError(t, s.Release(t.Context(), "watch-other", tok))
		require.False(t, settledWithin(mine, 200*time.Millisecond))
		stop()
		testenv.WaitFor(t, 5*time.Second, "the unsubscription", func() bool {
			n, err := c.PubSubShardNumSub(t.Context(), s.RedisKey("watch-mine")+settledSuffix).Result()
			return err == nil && n[s.RedisKey("watch-mine")+settledSuffix] == 0
		})
	})
}
