package memstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/storetest"
	"github.com/idemproxy/idemproxy/processor"
)

var (
	_ processor.Store   = (*Store)(nil)
	_ processor.Watcher = (*Store)(nil)
)

// TestStore_conformance runs the shared Store behaviours with the clock
// stepped instead of slept: the same table runs against redisstore on a
// real Redis, so this store cannot drift from it.
func TestStore_conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Subject {
		clock := NewClock(time.Unix(1_700_000_000, 0))
		return storetest.Subject{Store: New(clock.Now), Wait: clock.Advance}
	})
}

var claim = idem.Claim{Token: "owner", Fingerprint: []byte("fp"), Lease: idem.Lease{TTL: time.Second, Hold: time.Hour}}

// notice is whether c has a notice waiting.
func notice(c <-chan time.Time) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestStore_Watch(t *testing.T) {
	t.Run("a settlement prompts the key's watchers, once each", func(t *testing.T) {
		s := New(nil)
		_, err := s.Acquire(t.Context(), "k", claim)
		require.NoError(t, err)
		a, stopA, err := s.Watch(t.Context(), "k", time.Now())
		require.NoError(t, err)
		other, stopOther, err := s.Watch(t.Context(), "other", time.Now())
		require.NoError(t, err)
		require.Equal(t, 1, s.Watching("k"))
		require.NoError(t, s.Complete(t.Context(), "k", "owner", idem.Record{Status: 200}, time.Hour))
		require.True(t, notice(a))
		require.False(t, notice(a), "one notice")
		require.False(t, notice(other), "another key's settlement")
		stopA()
		stopOther()
		require.Zero(t, s.Watching("k"))
	})

	t.Run("a settlement since the caller's look prompts at once", func(t *testing.T) {
		s := New(nil)
		looked := time.Now()
		_, err := s.Acquire(t.Context(), "k", claim)
		require.NoError(t, err)
		require.NoError(t, s.Release(t.Context(), "k", "owner"))
		c, stop, err := s.Watch(t.Context(), "k", looked)
		require.NoError(t, err)
		defer stop()
		require.True(t, notice(c))
		late, stopLate, err := s.Watch(t.Context(), "k", time.Now().Add(time.Second))
		require.NoError(t, err)
		defer stopLate()
		require.False(t, notice(late), "settled before the look")
	})

	t.Run("lost notices are made up for by Recheck", func(t *testing.T) {
		s := New(nil)
		s.LoseNotices(true)
		_, err := s.Acquire(t.Context(), "k", claim)
		require.NoError(t, err)
		c, stop, err := s.Watch(t.Context(), "k", time.Now())
		require.NoError(t, err)
		defer stop()
		require.NoError(t, s.Abandon(t.Context(), "k", "owner", time.Hour))
		require.False(t, notice(c))
		s.Recheck()
		require.True(t, notice(c))
	})
}

func TestStore_Entry(t *testing.T) {
	t.Run("reports, stores and edits records as held", func(t *testing.T) {
		clock := NewClock(time.Unix(0, 0))
		s := New(clock.Now)
		_, ok := s.Entry("k")
		require.False(t, ok)
		s.Put("k", Entry{Token: "other", Fingerprint: []byte("fp"), LeaseEnd: clock.Now().Add(time.Second), Expires: clock.Now().Add(time.Hour)})
		acq, err := s.Acquire(t.Context(), "k", claim)
		require.NoError(t, err)
		require.Equal(t, idem.StateInProgress, acq.State)
		s.Edit(func(key string, e *Entry) { e.Token = "owner" })
		require.NoError(t, s.Release(t.Context(), "k", "owner"))
		_, ok = s.Entry("k")
		require.False(t, ok)
	})

	t.Run("a record that ran out is gone", func(t *testing.T) {
		clock := NewClock(time.Unix(0, 0))
		s := New(clock.Now)
		_, err := s.Acquire(t.Context(), "k", claim)
		require.NoError(t, err)
		e, ok := s.Entry("k")
		require.True(t, ok)
		require.EqualValues(t, 1, e.Fence)
		clock.Advance(time.Hour)
		_, ok = s.Entry("k")
		require.False(t, ok)
	})

	t.Run("a canceled context changes nothing", func(t *testing.T) {
		s := New(nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := s.Acquire(ctx, "k", claim)
		require.ErrorIs(t, err, context.Canceled)
		_, ok := s.Entry("k")
		require.False(t, ok)
	})
}
