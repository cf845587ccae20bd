package processor

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// unreplicatedStore is a fakeStore whose acquires (of a free key) and
// completions are written but not acknowledged by replicas, as
// redisstore reports them under --redis-min-replicas.
type unreplicatedStore struct {
	*fakeStore
	acquire bool
	// complete is how many completions are reported unreplicated before
	// the replicas confirm one; -1: never.
	complete int
}

func (s *unreplicatedStore) Acquire(ctx context.Context, key string, c idem.Claim) (idem.Acquisition, error) {
	acq, err := s.fakeStore.Acquire(ctx, key, c)
	if err == nil && s.acquire && acq.State == idem.StateAcquired {
		return idem.Acquisition{}, fmt.Errorf("fake: %w", idem.ErrUnreplicated)
	}
	return acq, err
}

func (s *unreplicatedStore) Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error {
	err := s.fakeStore.Complete(ctx, key, token, rec, retention)
	if err == nil && s.complete != 0 {
		s.complete--
		return fmt.Errorf("fake: %w", idem.ErrUnreplicated)
	}
	return err
}

func TestServer_Process_unreplicated(t *testing.T) {
	t.Run("an unreplicated lock is refused with 503 and released; nothing goes upstream", func(t *testing.T) {
		store := &unreplicatedStore{fakeStore: newFakeStore(), acquire: true}
		srv, reg := newTestServer(t, store, nil)
		out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("b", true))
		require.NoError(t, err)
		require.Len(t, out, 2)
		p, hs := requireProblem(t, out[1], 503, "store-unavailable")
		require.Contains(t, p.Detail, "replicas")
		require.Equal(t, "1", headerGet(hs, "retry-after"))
		require.Equal(t, []string{"acquire", "release"}, store.ops())
		_, held := store.entry(keyOf("k"))
		require.False(t, held, "the lock is gone: a retry may run")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_unreplicated_writes_total", "op", "acquire"))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeStoreError))
	})
	t.Run("an unreplicated completion is delivered at once, and written again until the replicas confirm it", func(t *testing.T) {
		store := &unreplicatedStore{fakeStore: newFakeStore(), complete: 2}
		srv, reg := newTestServer(t, store, nil)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "200"), respBody("paid", true))
		require.NoError(t, err)
		require.Len(t, out, 3)
		requireContinue(t, out[2])
		require.Equal(t, []string{"acquire", "complete", "complete", "complete"}, store.ops())
		e, ok := store.entry(keyOf("k"))
		require.True(t, ok)
		require.NotNil(t, e.rec)
		require.Equal(t, "paid", string(e.rec.Body))
		require.Zero(t, counter(t, reg, "idemproxy_unreplicated_writes_total", "op", "complete"), "confirmed in the end")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStored))
	})
	t.Run("a completion never confirmed until the lease ends is counted", func(t *testing.T) {
		store := &unreplicatedStore{fakeStore: newFakeStore(), complete: -1}
		srv, reg := newTestServer(t, store, func(c *Config) {
			c.LockTTL, c.Heartbeat, c.FinalizeTimeout = time.Second, 500*time.Millisecond, 100*time.Millisecond
		})
		_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "200"), respBody("paid", true))
		require.NoError(t, err)
		e, ok := store.entry(keyOf("k"))
		require.True(t, ok)
		require.Equal(t, "paid", string(e.rec.Body), "stored on the primary all the same")
		require.Greater(t, len(store.callsOf("complete")), 2, "tried until the lease ended")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_unreplicated_writes_total", "op", "complete"))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStored))
	})
}
