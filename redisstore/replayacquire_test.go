package redisstore

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// askingClaim is a claim with fingerprint "fp" that asks for a replay
// token (idem.Claim.Replay) living 5 s; all asks for one with every
// replayable record.
func askingClaim(t *testing.T, all bool) idem.Claim {
	t.Helper()
	return idem.Claim{Token: token(t), Fingerprint: []byte("fp"), Scope: "api.example", Lease: lease(time.Minute),
		Replay: idem.ReplayAsk{TTL: 5 * time.Second, All: all}}
}

// replayKeys is the replay tokens' keys in Redis.
func replayKeys(t *testing.T, c *redis.Client) []string {
	t.Helper()
	keys, err := c.Keys(t.Context(), "*"+replaySuffix+"*").Result()
	require.NoError(t, err)
	return keys
}

// TestStore_AcquireIssuesReplay: an acquire that asks for a replay token
// gets one, in its own round trip, with a completed record the replay
// endpoint is to serve, and the token is the same as IssueReplay's: the
// endpoint takes it once, it expires, and a deleted record's successor
// is not replayed by it. Nothing else gets one.
func TestStore_AcquireIssuesReplay(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	want := completeWithTrailers(t, s, "T")
	plain := sampleRecord()
	plain.Fingerprint = []byte("fp")
	tok := acquiredWith(t, s, "plain", lease(time.Minute))
	require.NoError(t, s.Complete(t.Context(), "plain", tok, plain, time.Hour))

	t.Run("a record with trailers: a token, taken once", func(t *testing.T) {
		acq, err := s.Acquire(t.Context(), "T", askingClaim(t, false))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, want.Body, acq.Record.Body, "the record is read as without a token")
		require.NotEmpty(t, acq.ReplayToken)
		id, random, ok := cutToken(acq.ReplayToken)
		require.True(t, ok)
		require.Equal(t, s.id(s.RedisKey("T")), id)
		require.True(t, isHex(random, 32), "128 random bits, hex")
		ttl, err := c.PTTL(t.Context(), s.RedisKey("T")+replaySuffix+random).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, time.Duration(0))
		require.LessOrEqual(t, ttl, 5*time.Second)

		rec, err := s.TakeReplay(t.Context(), acq.ReplayToken)
		require.NoError(t, err)
		require.Equal(t, want.TrailerHeaders, rec.TrailerHeaders)
		require.Equal(t, want.Body, rec.Body)
		_, err = s.TakeReplay(t.Context(), acq.ReplayToken)
		require.ErrorIs(t, err, ErrNoReplay, "single use")
	})
	t.Run("through batched writes too", func(t *testing.T) {
		b := New(c, Options{Batching: Batching{Writers: 1, MaxBatch: 8}})
		t.Cleanup(b.Close)
		acq, err := b.Acquire(t.Context(), "T", askingClaim(t, false))
		require.NoError(t, err)
		rec, err := s.TakeReplay(t.Context(), acq.ReplayToken)
		require.NoError(t, err, "taken by another store (another replica's endpoint)")
		require.Equal(t, want.Body, rec.Body)
	})
	t.Run("each acquire draws its own token", func(t *testing.T) {
		a, err := s.Acquire(t.Context(), "T", askingClaim(t, false))
		require.NoError(t, err)
		b, err := s.Acquire(t.Context(), "T", askingClaim(t, false))
		require.NoError(t, err)
		require.NotEqual(t, a.ReplayToken, b.ReplayToken)
		for _, tok := range []string{b.ReplayToken, a.ReplayToken} {
			_, err := s.TakeReplay(t.Context(), tok)
			require.NoError(t, err)
		}
	})
	t.Run("a record without trailers: none, unless asked for all", func(t *testing.T) {
		acq, err := s.Acquire(t.Context(), "plain", askingClaim(t, false))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Empty(t, acq.ReplayToken)
		require.Empty(t, replayKeys(t, c), "nothing written")

		acq, err = s.Acquire(t.Context(), "plain", askingClaim(t, true))
		require.NoError(t, err)
		require.NotEmpty(t, acq.ReplayToken)
		rec, err := s.TakeReplay(t.Context(), acq.ReplayToken)
		require.NoError(t, err)
		require.Equal(t, plain.Body, rec.Body)
	})
	t.Run("none unless asked", func(t *testing.T) {
		acq, err := s.Acquire(t.Context(), "T", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Empty(t, acq.ReplayToken)
		require.Empty(t, replayKeys(t, c))
	})
	t.Run("none for a request with another fingerprint (refused, not replayed)", func(t *testing.T) {
		cl := askingClaim(t, true)
		cl.Fingerprint = []byte("other")
		acq, err := s.Acquire(t.Context(), "T", cl)
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Empty(t, acq.ReplayToken)
		require.Empty(t, replayKeys(t, c))
	})
	t.Run("none for a record that cannot be replayed", func(t *testing.T) {
		tok := acquiredWith(t, s, "unstored", lease(time.Minute))
		require.NoError(t, s.Complete(t.Context(), "unstored", tok, idem.Record{Fingerprint: []byte("fp"), Status: 200, Trailers: true}, time.Hour))
		acq, err := s.Acquire(t.Context(), "unstored", askingClaim(t, true))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.False(t, acq.Record.BodyStored)
		require.Empty(t, acq.ReplayToken)
		require.Empty(t, replayKeys(t, c))
	})
	t.Run("none for a fresh lock, a key in progress or an unknown outcome", func(t *testing.T) {
		acq, err := s.Acquire(t.Context(), "fresh", askingClaim(t, true))
		require.NoError(t, err)
		require.Equal(t, idem.StateAcquired, acq.State)
		require.Empty(t, acq.ReplayToken)
		acq, err = s.Acquire(t.Context(), "fresh", askingClaim(t, true))
		require.NoError(t, err)
		require.Equal(t, idem.StateInProgress, acq.State)
		require.Empty(t, acq.ReplayToken)
		tok := acquiredWith(t, s, "abandoned", lease(time.Minute))
		require.NoError(t, s.Abandon(t.Context(), "abandoned", tok, time.Hour))
		acq, err = s.Acquire(t.Context(), "abandoned", askingClaim(t, true))
		require.NoError(t, err)
		require.Equal(t, idem.StateUnknown, acq.State)
		require.Empty(t, acq.ReplayToken)
		require.Empty(t, replayKeys(t, c))
	})
	t.Run("a token of a deleted record replays nothing, not its successor", func(t *testing.T) {
		acq, err := s.Acquire(t.Context(), "T", askingClaim(t, false))
		require.NoError(t, err)
		require.NoError(t, c.Del(t.Context(), s.RedisKey("T")).Err())
		completeWithTrailers(t, s, "T")
		_, err = s.TakeReplay(t.Context(), acq.ReplayToken)
		require.ErrorIs(t, err, ErrNoReplay)
	})
	t.Run("a negative lifetime is refused before Redis", func(t *testing.T) {
		cl := askingClaim(t, false)
		cl.Replay.TTL = -time.Second
		_, err := s.Acquire(t.Context(), "T", cl)
		require.ErrorIs(t, err, ErrInvalidArgument)
	})
}

// TestStore_AcquireIssuesReplayMarked: with store-reset markers the token
// key follows the marker (KEYS[4]): a missing marker still refuses a free
// key, and once written, a completed record still gets its token.
func TestStore_AcquireIssuesReplayMarked(t *testing.T) {
	t.Parallel()
	_, topo, m := standaloneMarked(t)
	a := newResetProcess(t, topo, m, time.Hour, false)
	_, err := a.store.Acquire(t.Context(), "free", askingClaim(t, true))
	require.ErrorIs(t, err, idem.ErrStoreReset, "no marker: nothing granted, token asked or not")
	a.gate.check(t.Context())
	require.NoError(t, a.gate.Usable("k"))
	want := completeWithTrailers(t, a.store, "k")
	acq, err := a.store.Acquire(t.Context(), "k", askingClaim(t, false))
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, acq.State)
	rec, err := a.store.TakeReplay(t.Context(), acq.ReplayToken)
	require.NoError(t, err)
	require.Equal(t, want.Body, rec.Body)
	acq, err = a.store.Acquire(t.Context(), "new", askingClaim(t, true))
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State, "the marker is read where it was")
}
