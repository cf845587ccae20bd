package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestStore_List(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	// 150 completed keys, 3 in progress, 2 abandoned, 1 whose lease ran out.
	for i := range 150 {
		completed(t, s, "done-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	for _, k := range []string{"p1", "p2", "p3"} {
		acquired(t, s, k, time.Minute)
	}
	for _, k := range []string{"u1", "u2"} {
		tok := acquired(t, s, k, time.Minute)
		require.NoError(t, s.Abandon(t.Context(), k, tok, time.Hour))
	}
	acquired(t, s, "crashed", 50*time.Millisecond)
	require.Eventually(t, func() bool {
		acq, err := s.Acquire(t.Context(), "crashed", claim(token(t), []byte("fp"), time.Minute))
		return err == nil && acq.State == idem.StateUnknown
	}, 5*time.Second, 10*time.Millisecond)

	// all pages through the listing with a small limit.
	all := func(states ...string) map[string]KeyInfo {
		seen := map[string]KeyInfo{}
		opts := ListOptions{States: states, Limit: 10}
		for pages := 0; ; pages++ {
			require.Less(t, pages, 100, "the listing must end")
			page, err := s.List(t.Context(), opts)
			require.NoError(t, err)
			for _, k := range page.Keys {
				seen[k.ID] = k
			}
			if page.Cursor == "0" {
				return seen
			}
			opts.Cursor = page.Cursor
		}
	}

	t.Run("held keys by state, with scope, age and fence, never a body or token", func(t *testing.T) {
		held := all("in_progress", "outcome_unknown")
		require.Len(t, held, 6)
		states := map[string]int{}
		for _, k := range held {
			states[k.State]++
			require.Equal(t, "api.example", k.Scope)
			require.Positive(t, k.Age)
			require.EqualValues(t, 1, k.Fence)
			require.Zero(t, k.Status)
			require.Len(t, k.ID, 32)
		}
		require.Equal(t, map[string]int{"in_progress": 3, "outcome_unknown": 3}, states)
		crashed := held[s.id(s.RedisKey("crashed"))]
		require.True(t, crashed.Expired, "the lease ran out: held as unknown")
		p1 := held[s.id(s.RedisKey("p1"))]
		require.Greater(t, p1.LeaseLeft, 50*time.Second)
	})
	t.Run("every record without a filter; fence counters are not records", func(t *testing.T) {
		require.Len(t, all(), 156)
		require.Len(t, all("completed"), 150)
	})
	t.Run("a listed id finds and deletes its record", func(t *testing.T) {
		id := s.id(s.RedisKey("u1"))
		info, err := s.InspectID(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, "outcome_unknown", info.State)
		require.Equal(t, id, info.ID)
		deleted, err := s.DeleteID(t.Context(), id)
		require.NoError(t, err)
		require.True(t, deleted)
		_, err = c.Get(t.Context(), s.RedisKey("u1")+fenceSuffix).Result()
		require.NoError(t, err, "the fence counter stays")
		_, err = s.InspectID(t.Context(), "not-an-id")
		require.ErrorIs(t, err, ErrBadID)
	})
	t.Run("a foreign cursor is refused", func(t *testing.T) {
		_, err := s.List(t.Context(), ListOptions{Cursor: "x"})
		require.ErrorIs(t, err, ErrBadCursor)
	})
}
