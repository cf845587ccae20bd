package envoy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// evictionFlags check Redis often, so a policy change shows within a test.
var evictionFlags = []string{"--health-interval", "100ms"}

// TestNeverTwice_EvictingRedis: a Redis that may evict keys under memory
// pressure can drop a lock or a stored response, and the retry then runs
// again. By default idemproxy refuses to serve through one: not ready, and
// keyed requests get 503 store-unavailable, so nothing runs unguarded. With
// the policy fixed it serves again; a full noeviction Redis fails closed.
// Only --allow-evicting-redis serves through an evicting Redis, and the
// last subtest shows, with a real Redis under memory pressure, what that
// risks: a completed key evicted and run a second time.
func TestNeverTwice_EvictingRedis(t *testing.T) {
	t.Parallel()
	t.Run("the default refuses an evicting Redis and serves once it is fixed", func(t *testing.T) {
		s := startStack(t, evictionFlags...)
		rdb := s.redis.Client(t)
		done := newKey(t)
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", done).status)

		for _, policy := range []string{"allkeys-lru", "volatile-lru", "allkeys-lfu", "volatile-ttl"} {
			require.NoError(t, rdb.ConfigSet(t.Context(), "maxmemory-policy", policy).Err())
			testenv.WaitFor(t, 5*time.Second, "readiness to fail under "+policy, func() bool { return readyz(s.adminURL) == http.StatusServiceUnavailable })
			key := newKey(t)
			r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
			require.Equal(t, problem+"store-unavailable", r.problemType())
			require.Equal(t, "1", r.header.Get("Retry-After"))
			require.Zero(t, s.executions(t, key), "nothing runs under "+policy)
			testenv.WaitFor(t, 5*time.Second, "the error log naming "+policy, func() bool {
				return strings.Contains(s.idemproxy.Output(), `"maxmemory_policy":"`+policy+`"`)
			})
		}
		require.Contains(t, s.idemproxy.Output(), "maxmemory-policy noeviction", "the log says what to set")
		require.EqualValues(t, 1, s.metric(t, "idemproxy_redis_evicting"))
		require.Positive(t, s.metric(t, `idemproxy_requests_total{outcome="store_unsafe"}`))

		require.NoError(t, rdb.ConfigSet(t.Context(), "maxmemory-policy", "noeviction").Err())
		testenv.WaitFor(t, 5*time.Second, "readiness back", func() bool { return readyz(s.adminURL) == http.StatusOK })
		require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", done).replayed())
		key := newKey(t)
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", key).status)
		require.EqualValues(t, 0, s.metric(t, "idemproxy_redis_evicting"))
		require.EqualValues(t, 1, s.metric(t, `idemproxy_redis_persistence{kind="none"}`), "the test Redis has no persistence")
		require.Contains(t, s.idemproxy.Output(), "redis has no persistence")
	})

	t.Run("a full noeviction Redis fails closed and never evicts", func(t *testing.T) {
		s := startStack(t, evictionFlags...)
		rdb := s.redis.Client(t)
		done := newKey(t)
		first := s.do(t, "POST", "/charge", "", "Idempotency-Key", done)
		require.Equal(t, http.StatusOK, first.status)
		fill(t, rdb, "noeviction")

		key := newKey(t)
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusServiceUnavailable, r.status, "Redis refuses the write (OOM): %s", r.body)
		require.Equal(t, problem+"store-unavailable", r.problemType())
		require.Zero(t, s.executions(t, key))
		retry := s.do(t, "POST", "/charge", "", "Idempotency-Key", done)
		require.Contains(t, []int{http.StatusOK, http.StatusServiceUnavailable}, retry.status, "%s", retry.body)
		require.Equal(t, 1, s.executions(t, done), "a full Redis never lets a completed key run again")

		require.NoError(t, rdb.ConfigSet(t.Context(), "maxmemory", "0").Err())
		require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", done).replayed(), "nothing was evicted")
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", key).status)
		require.Equal(t, 1, s.executions(t, key))
	})

	t.Run("with --allow-evicting-redis memory pressure evicts a key, which then runs twice", func(t *testing.T) {
		// --on-store-reset=accept too: the pressure may evict the
		// store-reset marker with the record, and idemproxy would then
		// hold every key as a store reset (never a second run) instead
		// of showing the danger this opt-in accepts.
		s := startStack(t, append([]string{"--allow-evicting-redis", "--on-store-reset", "accept"}, evictionFlags...)...)
		rdb := s.redis.Client(t)
		require.NoError(t, rdb.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err())
		testenv.WaitFor(t, 5*time.Second, "the warning", func() bool {
			return strings.Contains(s.idemproxy.Output(), "serving anyway because of --allow-evicting-redis")
		})
		require.Equal(t, http.StatusOK, readyz(s.adminURL), "ready: the operator accepted the risk")
		key := newKey(t)
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", key).status)
		fill(t, rdb, "allkeys-lru")
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.False(t, r.replayed(), "the evicted record is gone")
		require.Equal(t, 2, s.executions(t, key), "the danger the default refuses: a second charge")
		t.Logf("allkeys-lru under pressure, allowed: key ran %d times", s.executions(t, key))
	})
}

// fill makes Redis full. With noeviction it sets maxmemory below what Redis
// already uses, so every write is refused (OOM), as in a Redis filled to
// its limit; with an evicting policy it leaves 1 MiB of room and writes
// 64 MiB of junk through it, which pushes out everything older.
func fill(t *testing.T, rdb *redis.Client, policy string) {
	t.Helper()
	ctx := t.Context()
	used := func() int64 {
		info, err := rdb.Info(ctx, "memory").Result()
		require.NoError(t, err)
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				require.NoError(t, err)
				return n
			}
		}
		require.FailNow(t, "no used_memory in INFO memory")
		return 0
	}
	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory-policy", policy).Err())
	if policy == "noeviction" {
		require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used()/2, 10)).Err())
		require.ErrorContains(t, rdb.Set(ctx, "junk", "x", 0).Err(), "OOM", "Redis refuses writes when full")
		return
	}
	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", strconv.FormatInt(used()+1<<20, 10)).Err())
	junk := strings.Repeat("x", 64<<10)
	for i := range 1024 {
		require.NoError(t, rdb.Set(ctx, fmt.Sprintf("junk:%d", i), junk, 0).Err())
	}
}
