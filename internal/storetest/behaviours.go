package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// behaviours is the table. Each row names one rule of the Store contract.
var behaviours = []behaviour{
	{"a free key is granted with fence 1", func(t *testing.T, s Subject) {
		_, fence := grant(t, s.Store, "k", "fp", holdLease)
		require.EqualValues(t, 1, fence)
	}},
	{"a held key reports the holder's fingerprint and the lease left", func(t *testing.T, s Subject) {
		grant(t, s.Store, "k", "first", holdLease)
		acq := look(t, s.Store, "k", "second", holdLease)
		require.Equal(t, idem.StateInProgress, acq.State)
		require.Equal(t, []byte("first"), acq.Fingerprint)
		require.Positive(t, acq.LockTTL)
		require.LessOrEqual(t, acq.LockTTL, leaseTTL)
		require.Nil(t, acq.Record)
	}},
	{"a held key reports how long it has been held, to Acquire and Peek", func(t *testing.T, s Subject) {
		grant(t, s.Store, "k", "first", holdLease)
		s.Wait(100 * time.Millisecond)
		acq := look(t, s.Store, "k", "second", holdLease)
		require.Equal(t, idem.StateInProgress, acq.State)
		// Whole milliseconds on the store's clock: at least the wait, less
		// a millisecond of rounding, and less than the lease.
		require.GreaterOrEqual(t, acq.Running, 99*time.Millisecond)
		require.Less(t, acq.Running, leaseTTL)
		peeked, err := s.Store.Peek(t.Context(), "k")
		require.NoError(t, err)
		require.GreaterOrEqual(t, peeked.Running, acq.Running)
		require.Less(t, peeked.Running, leaseTTL)
	}},
	{"a completed key replays its record exactly", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		rec := sampleRecord()
		require.NoError(t, s.Store.Complete(t.Context(), "k", tok, rec, time.Hour))
		acq := look(t, s.Store, "k", "other", holdLease)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, rec.Fingerprint, acq.Fingerprint)
		require.Equal(t, &rec, acq.Record)
	}},
	{"a record completed without its body keeps the status and why", func(t *testing.T, s Subject) {
		for key, why := range map[string]idem.Record{"too-large": {}, "cut": {Incomplete: true}, "trailers": {Trailers: true}, "store-failed": {StoreFailed: true}} {
			tok, _ := grant(t, s.Store, key, "fp", holdLease)
			rec := idem.Record{Fingerprint: []byte("fp"), Status: 200, Body: []byte("dropped"), Incomplete: why.Incomplete, Trailers: why.Trailers, StoreFailed: why.StoreFailed}
			require.NoError(t, s.Store.Complete(t.Context(), key, tok, rec, time.Hour))
			got := look(t, s.Store, key, "fp", holdLease).Record
			require.NotNil(t, got, key)
			require.Equal(t, 200, got.Status, key)
			require.False(t, got.BodyStored, key)
			require.Empty(t, got.Body, key)
			require.Equal(t, why.Incomplete, got.Incomplete, key)
			require.Equal(t, why.Trailers, got.Trailers, key)
			require.Equal(t, why.StoreFailed, got.StoreFailed, key)
		}
	}},
	{"release frees the key and the next grant gets the next fence", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		require.NoError(t, s.Store.Release(t.Context(), "k", tok))
		_, fence := grant(t, s.Store, "k", "fp", holdLease)
		require.EqualValues(t, 2, fence)
	}},
	{"only the owner renews, completes, releases or abandons", func(t *testing.T, s Subject) {
		grant(t, s.Store, "k", "fp", holdLease)
		stranger := token(t)
		require.ErrorIs(t, s.Store.Renew(t.Context(), "k", stranger, holdLease), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Complete(t.Context(), "k", stranger, sampleRecord(), time.Hour), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Release(t.Context(), "k", stranger), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Abandon(t.Context(), "k", stranger, time.Hour), idem.ErrLeaseLost)
		require.Equal(t, idem.StateInProgress, look(t, s.Store, "k", "fp", holdLease).State, "nothing changed")
	}},
	{"an absent key has no owner", func(t *testing.T, s Subject) {
		tok := token(t)
		require.ErrorIs(t, s.Store.Renew(t.Context(), "absent", tok, holdLease), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Complete(t.Context(), "absent", tok, sampleRecord(), time.Hour), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Release(t.Context(), "absent", tok), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Abandon(t.Context(), "absent", tok, time.Hour), idem.ErrLeaseLost)
	}},
	{"a completed record is never overwritten, released, renewed or abandoned", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		rec := sampleRecord()
		require.NoError(t, s.Store.Complete(t.Context(), "k", tok, rec, time.Hour))
		require.NoError(t, s.Store.Complete(t.Context(), "k", tok, idem.Record{Status: 500, BodyStored: true}, time.Hour),
			"a retried completion by its owner succeeds, writing nothing")
		require.ErrorIs(t, s.Store.Complete(t.Context(), "k", token(t), idem.Record{Status: 500, BodyStored: true}, time.Hour), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Release(t.Context(), "k", tok), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Renew(t.Context(), "k", tok, holdLease), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Abandon(t.Context(), "k", tok, time.Hour), idem.ErrLeaseLost)
		require.Equal(t, &rec, look(t, s.Store, "k", "fp", holdLease).Record)
	}},
	{"an abandoned key is an unknown outcome with its fingerprint", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		require.NoError(t, s.Store.Abandon(t.Context(), "k", tok, time.Hour))
		acq := look(t, s.Store, "k", "other", holdLease)
		require.Equal(t, idem.StateUnknown, acq.State)
		require.False(t, acq.Expired)
		require.Equal(t, []byte("fp"), acq.Fingerprint)
		require.Greater(t, acq.LockTTL, 59*time.Minute, "held for the hold given")
		require.ErrorIs(t, s.Store.Complete(t.Context(), "k", tok, sampleRecord(), time.Hour), idem.ErrLeaseLost, "given up for good")
	}},
	{"a lease that runs out is an unknown outcome, never a free key", func(t *testing.T, s Subject) {
		grant(t, s.Store, "k", "fp", holdLease)
		s.Wait(leaseTTL + past)
		acq := look(t, s.Store, "k", "fp", holdLease)
		require.Equal(t, idem.StateUnknown, acq.State)
		require.True(t, acq.Expired)
		require.Equal(t, []byte("fp"), acq.Fingerprint)
		require.Positive(t, acq.LockTTL)
		require.LessOrEqual(t, acq.LockTTL, hold)
	}},
	{"an owner whose lease ran out may still renew and complete", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		s.Wait(leaseTTL + past)
		require.NoError(t, s.Store.Renew(t.Context(), "k", tok, holdLease))
		require.Equal(t, idem.StateInProgress, look(t, s.Store, "k", "fp", holdLease).State, "alive again")
		rec := sampleRecord()
		require.NoError(t, s.Store.Complete(t.Context(), "k", tok, rec, time.Hour))
		require.Equal(t, &rec, look(t, s.Store, "k", "fp", holdLease).Record)
	}},
	{"a renewal keeps the lease from running out", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		for range 3 {
			s.Wait(leaseTTL / 2)
			require.NoError(t, s.Store.Renew(t.Context(), "k", tok, holdLease))
		}
		require.Equal(t, idem.StateInProgress, look(t, s.Store, "k", "fp", holdLease).State)
	}},
	{"a record with no sign of life goes after its hold", func(t *testing.T, s Subject) {
		grant(t, s.Store, "k", "fp", holdLease)
		s.Wait(hold + past)
		_, fence := grant(t, s.Store, "k", "fp", holdLease)
		require.EqualValues(t, 2, fence, "fences survive the record")
	}},
	{"with takeover a lease that ran out goes to the next claimant", func(t *testing.T, s Subject) {
		old, _ := grant(t, s.Store, "k", "fp", takeoverLease)
		s.Wait(leaseTTL + past)
		next, fence := grant(t, s.Store, "k", "next", takeoverLease)
		require.EqualValues(t, 2, fence)
		require.ErrorIs(t, s.Store.Complete(t.Context(), "k", old, sampleRecord(), time.Hour), idem.ErrLeaseLost)
		require.ErrorIs(t, s.Store.Renew(t.Context(), "k", old, takeoverLease), idem.ErrLeaseLost)
		require.NoError(t, s.Store.Release(t.Context(), "k", next))
	}},
	{"with takeover a record written under the default policy is taken over too", func(t *testing.T, s Subject) {
		grant(t, s.Store, "k", "fp", holdLease)
		s.Wait(leaseTTL + past)
		grant(t, s.Store, "k", "fp", takeoverLease)
	}},
	{"a completed record goes after its retention", func(t *testing.T, s Subject) {
		tok, _ := grant(t, s.Store, "k", "fp", holdLease)
		require.NoError(t, s.Store.Complete(t.Context(), "k", tok, sampleRecord(), hold))
		s.Wait(hold + past)
		grant(t, s.Store, "k", "fp", holdLease)
	}},
	{"peek reports what acquire would, and takes nothing", func(t *testing.T, s Subject) {
		peek := func(key string) idem.Acquisition {
			acq, err := s.Store.Peek(t.Context(), key)
			require.NoError(t, err)
			return acq
		}
		require.Equal(t, idem.StateFree, peek("k").State)
		require.Equal(t, idem.StateFree, peek("k").State, "peeking never creates a record")
		tok, fence := grant(t, s.Store, "k", "fp", holdLease)
		require.EqualValues(t, 1, fence, "peeking took no fence")
		acq := peek("k")
		require.Equal(t, idem.StateInProgress, acq.State)
		require.Equal(t, []byte("fp"), acq.Fingerprint)
		rec := sampleRecord()
		require.NoError(t, s.Store.Complete(t.Context(), "k", tok, rec, time.Hour))
		require.Equal(t, &rec, peek("k").Record)
		grant(t, s.Store, "held", "fp", holdLease)
		s.Wait(leaseTTL + past)
		acq = peek("held")
		require.Equal(t, idem.StateUnknown, acq.State)
		require.True(t, acq.Expired)
	}},
	{"keys are independent", func(t *testing.T, s Subject) {
		grant(t, s.Store, "a", "fp", holdLease)
		grant(t, s.Store, "b", "fp", holdLease)
		_, fence := grant(t, s.Store, "c", "fp", holdLease)
		require.EqualValues(t, 1, fence, "each key counts its own fences")
	}},
}
