package redisstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// batchSizes records the writes a batching store made.
type batchSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchSizes) observe(n int) {
	b.mu.Lock()
	b.sizes = append(b.sizes, n)
	b.mu.Unlock()
}

func (b *batchSizes) stats() (writes, calls, largest int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.sizes {
		writes++
		calls += n
		largest = max(largest, n)
	}
	return
}

// acquireAll acquires n distinct keys at once from n goroutines and
// returns each one's result, in key order.
func acquireAll(t *testing.T, s *Store, prefix string, n int) ([]idem.Acquisition, []error) {
	t.Helper()
	acqs, errs := make([]idem.Acquisition, n), make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			acqs[i], errs[i] = s.Acquire(ctx, fmt.Sprintf("%s-%d", prefix, i), claim(fmt.Sprintf("tok-%d", i), []byte("fp"), time.Minute))
		})
	}
	close(start)
	wg.Wait()
	return acqs, errs
}

func TestBatching(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	c := srv.Client(t)
	newStore := func(writers, maxBatch int) (*Store, *batchSizes) {
		sizes := &batchSizes{}
		s := New(c, Options{Batching: Batching{Writers: writers, MaxBatch: maxBatch, Observe: sizes.observe}})
		t.Cleanup(s.Close)
		return s, sizes
	}

	t.Run("a lone call is sent at once, alone", func(t *testing.T) {
		s, sizes := newStore(2, 16)
		for i := range 5 {
			acquired(t, s, fmt.Sprintf("lone-%d", i), time.Minute)
		}
		writes, calls, largest := sizes.stats()
		require.Equal(t, 5, writes)
		require.Equal(t, 5, calls)
		require.Equal(t, 1, largest)
	})
	t.Run("concurrent calls share writes, bounded, and each gets its own result", func(t *testing.T) {
		s, sizes := newStore(1, 8)
		const n = 200
		acqs, errs := acquireAll(t, s, "many", n)
		fences := map[int64]int{}
		for i := range n {
			require.NoError(t, errs[i], i)
			require.Equal(t, idem.StateAcquired, acqs[i].State, i)
			fences[acqs[i].Fence]++
		}
		require.Equal(t, map[int64]int{1: n}, fences, "200 keys, each granted once")
		writes, calls, largest := sizes.stats()
		require.Equal(t, n, calls)
		require.Less(t, writes, n, "some writes carried several calls")
		require.LessOrEqual(t, largest, 8, "no write above MaxBatch")
		t.Logf("%d calls in %d writes, largest %d", calls, writes, largest)
		// Their records are what unbatched calls would have written.
		for i := range n {
			acq, err := s.Acquire(t.Context(), fmt.Sprintf("many-%d", i), claim(token(t), []byte("fp"), time.Minute))
			require.NoError(t, err)
			require.Equal(t, idem.StateInProgress, acq.State)
		}
	})
	t.Run("a call that fails fails alone in its write", func(t *testing.T) {
		s, _ := newStore(1, 64)
		// Not a hash: the script's HMGET on it fails with WRONGTYPE.
		require.NoError(t, c.Set(t.Context(), s.RedisKey("bad-7"), "x", time.Minute).Err())
		acqs, errs := acquireAll(t, s, "bad", 50)
		for i := range 50 {
			if i == 7 {
				require.ErrorContains(t, errs[i], "WRONGTYPE")
				continue
			}
			require.NoError(t, errs[i], i)
			require.Equal(t, idem.StateAcquired, acqs[i].State)
		}
	})
	t.Run("scripts Redis forgot are loaded again inside a batch", func(t *testing.T) {
		s, sizes := newStore(1, 64)
		require.NoError(t, c.ScriptFlush(t.Context()).Err())
		_, errs := acquireAll(t, s, "flushed", 100)
		for i, err := range errs {
			require.NoError(t, err, i)
		}
		_, _, largest := sizes.stats()
		t.Logf("largest write %d", largest)
	})
	t.Run("a caller whose deadline passes stops waiting; the others are not cut short", func(t *testing.T) {
		s, _ := newStore(1, 64)
		// Redis holds every client for 300 ms: the short caller gives
		// up, the long one gets its answer from the same write.
		require.NoError(t, c.Do(t.Context(), "CLIENT", "PAUSE", "300", "ALL").Err())
		var wg sync.WaitGroup
		var short, long error
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_, short = s.Acquire(ctx, "deadline-short", claim(token(t), []byte("fp"), time.Minute))
		})
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, long = s.Acquire(ctx, "deadline-long", claim(token(t), []byte("fp"), time.Minute))
		})
		wg.Wait()
		require.ErrorIs(t, short, context.DeadlineExceeded)
		require.NoError(t, long)
	})
	t.Run("after Close, calls fail at once", func(t *testing.T) {
		s, _ := newStore(2, 8)
		acquired(t, s, "before-close", time.Minute)
		s.Close()
		_, err := s.Acquire(t.Context(), "after-close", claim(token(t), []byte("fp"), time.Minute))
		require.ErrorIs(t, err, ErrStoreClosed)
	})
}

// TestBatching_cluster: batched calls for keys on every primary; go-redis
// splits each write by node.
func TestBatching_cluster(t *testing.T) {
	t.Parallel()
	cl := redistopo.NewCluster(t)
	cc := cl.Client(t)
	var writes, calls atomic.Int64
	s := New(cc, Options{Prefix: "batch:", Batching: Batching{Writers: 1, MaxBatch: 16, Observe: func(n int) {
		writes.Add(1)
		calls.Add(int64(n))
	}}})
	t.Cleanup(s.Close)
	keys := clusterKeys(t, s, cl, 60)
	var wg sync.WaitGroup
	errs := make(chan error, len(keys))
	for k := range keys {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			acq, err := s.Acquire(ctx, k, claim(token(t), []byte("fp"), time.Minute))
			if err == nil && acq.State != idem.StateAcquired {
				err = fmt.Errorf("%s: %v", k, acq.State)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, len(keys), calls.Load())
	t.Logf("%d calls over 3 primaries in %d writes", calls.Load(), writes.Load())
	for k, addr := range keys {
		n := redis.NewClient(&redis.Options{Addr: addr})
		exists, err := n.Exists(t.Context(), s.RedisKey(k)).Result()
		require.NoError(t, n.Close())
		require.NoError(t, err)
		require.EqualValues(t, 1, exists, "%s on its own primary %s", k, addr)
	}
}
