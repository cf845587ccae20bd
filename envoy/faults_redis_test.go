package envoy

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/toxi"
)

// TestFaults_RedisSlowAndCut puts Toxiproxy between idemproxy and Redis.
// A latency below --redis-timeout only slows requests down. A latency above
// it, or Redis cut off, fails closed: quick 503s, nothing reaches the
// backend, readiness and gRPC health say NOT_SERVING, and after healing
// every key runs within the lock TTL.
func TestFaults_RedisSlowAndCut(t *testing.T) {
	t.Parallel()
	tp := toxi.Start(t, binDir)
	proxyAddr := testenv.Addr(t)
	s := startFaultStack(t, faultConfig{
		redisVia: func(addr string) string {
			tp.CreateProxy(t, "redis", proxyAddr, addr)
			return proxyAddr
		},
		idemproxyArgs: []string{"--redis-timeout", "300ms", "--lock-ttl", outageLockTTL.String(),
			"--heartbeat", "500ms", "--health-interval", "200ms"},
	})
	latency := func(ms int) map[string]any { return map[string]any{"latency": ms, "jitter": 0} }

	// The subtests share the proxy: each starts only if the one before healed it.
	ok := t.Run("a latency below the Redis timeout still serves correctly", func(t *testing.T) {
		// 30 ms, not just under 300 ms: a new connection costs three round
		// trips (HELLO, CLIENT SETINFO, the command; four on the first) within
		// the timeout, and a loaded machine needs room on top.
		tp.AddToxic(t, "redis", "small", "latency", "downstream", latency(30))
		var rs []reply
		for range 5 {
			key := newKey(t)
			first := fire(s.client, s.url+"/charge", key)
			again := fire(s.client, s.url+"/charge", key)
			require.Equal(t, classExecuted, classify(first))
			require.Equal(t, classReplayed, classify(again))
			require.Equal(t, string(first.body), string(again.body))
			require.Equal(t, 1, s.executions(t, key))
			rs = append(rs, first, again)
		}
		require.Equal(t, http.StatusOK, readyz(s.adminURL), "30 ms is well within the 300 ms timeout")
		require.Equal(t, serving, grpcHealth(t, s.replicas[0].grpcAddr))
		tp.RemoveToxic(t, "redis", "small")
		logFigures(t, "redis-latency-30ms", "requests", len(rs), "statuses", fmt.Sprint(tally(rs)),
			"latency", "{"+latencies(rs)+"}")
	})
	ok = ok && t.Run("a latency above the Redis timeout fails closed quickly and heals", func(t *testing.T) {
		redisOutage(t, s, "redis-latency-1s",
			func() { tp.AddToxic(t, "redis", "slow", "latency", "downstream", latency(1000)) },
			func() { tp.RemoveToxic(t, "redis", "slow") })
	})

	_ = ok && t.Run("Redis cut off fails closed quickly and heals", func(t *testing.T) {
		enable := func(on bool) {
			tp.SetEnabled(t, "redis", on)
		}
		redisOutage(t, s, "redis-cut", func() { enable(false) }, func() { enable(true) })
	})
}

// outageLockTTL is the lock TTL of TestFaults_RedisSlowAndCut: a key whose
// acquire ran in Redis though idemproxy timed out waiting may stay refused
// (409) this long, never longer.
const outageLockTTL = 2 * time.Second

// redisOutage breaks Redis, sends requests with new keys until readiness
// and gRPC health both report it, heals Redis, and checks that every key
// of the outage ran once, within the lock TTL.
func redisOutage(t *testing.T, s *faultStack, scenario string, breakRedis, heal func()) {
	t.Helper()
	// Five concurrent requests leave idle connections in idemproxy's pool,
	// so the first requests of the outage use them and may reach Redis.
	warmKeys := []string{newKey(t), newKey(t), newKey(t), newKey(t), newKey(t)}
	warm, _ := storm(len(warmKeys), func(i int) reply { return fire(s.client, s.url+"/charge", warmKeys[i]) })
	require.Equal(t, 5, tally(warm)[classExecuted])
	backendBefore := s.stats(t).Total

	breakRedis()
	broken := time.Now()
	keys := []string{newKey(t), newKey(t), newKey(t), newKey(t), newKey(t)}
	send := func(i int) reply { return fire(s.client, s.url+"/charge", keys[i]) }
	rs, _ := storm(len(keys), send)
	for len(rs) < 50 && (readyz(s.adminURL) != http.StatusServiceUnavailable ||
		grpcHealth(t, s.replicas[0].grpcAddr) != healthpb.HealthCheckResponse_NOT_SERVING) {
		keys = append(keys, newKey(t))
		rs = append(rs, send(len(keys)-1))
		time.Sleep(100 * time.Millisecond) // pacing, not synchronisation
	}
	notServing := time.Since(broken)
	require.Equal(t, http.StatusServiceUnavailable, readyz(s.adminURL), "/readyz reports Redis")
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, grpcHealth(t, s.replicas[0].grpcAddr))
	counts := tally(rs)
	require.Equal(t, len(rs), counts[classUnavailable], "every request fails closed: %v", counts)
	for _, r := range rs {
		require.Less(t, r.elapsed, 1500*time.Millisecond, "a 503 well before Envoy's 2 s message_timeout")
	}
	ranDuringOutage := s.stats(t).Total - backendBefore
	require.Zero(t, ranDuringOutage, "no request reached the backend without a lock")
	locked := inProgressRecords(t, s)

	heal()
	healed := time.Now()
	refused := runAfterHealing(t, s, keys)
	testenv.WaitFor(t, 10*time.Second, "readiness and gRPC health to recover", func() bool {
		return readyz(s.adminURL) == http.StatusOK && grpcHealth(t, s.replicas[0].grpcAddr) == serving
	})
	if refused.ready == 0 {
		refused.ready = time.Since(healed)
	}
	logFigures(t, scenario, "requests", len(rs), "statuses", fmt.Sprint(counts), "latency", "{"+latencies(rs)+"}",
		"backend_executions_during_outage", ranDuringOutage, "not_serving_after", notServing.Round(time.Millisecond),
		"locks_left_in_redis", locked, "keys_409_after_heal", refused.keys, "longest_until_run",
		refused.longest.Round(time.Millisecond), "503_after_heal", refused.unavailable,
		"ready_after_heal", refused.ready.Round(time.Millisecond))
	require.LessOrEqual(t, refused.keys, locked, "only a key whose lock is in Redis is refused")
}

// stuck is what runAfterHealing saw: how many keys were refused with 409
// after Redis healed, the longest time until such a key ran, how many 503s
// came after healing, and when readiness and gRPC health were back.
type stuck struct {
	keys        int
	longest     time.Duration
	unavailable int
	ready       time.Duration
}

// runAfterHealing retries each key until it runs. Before it runs, a key may
// only be refused: 409 while a lock its timed-out acquire left in Redis
// lives, or 503 while idemproxy reconnects. Such a lock was taken before
// healing, so every key must run within the lock TTL of healing (plus room
// for a loaded machine), and exactly once.
func runAfterHealing(t *testing.T, s *faultStack, keys []string) stuck {
	t.Helper()
	healed := time.Now()
	var st stuck
	refused := map[string]bool{}
	pending := slices.Clone(keys)
	for len(pending) > 0 {
		require.Less(t, time.Since(healed), outageLockTTL+time.Second, "keys still refused: %d", len(pending))
		if st.ready == 0 && readyz(s.adminURL) == http.StatusOK && grpcHealth(t, s.replicas[0].grpcAddr) == serving {
			st.ready = time.Since(healed)
		}
		var next []string
		for _, k := range pending {
			switch c := classify(fire(s.client, s.url+"/charge", k)); c {
			case classExecuted:
				require.Equal(t, 1, s.executions(t, k))
				if refused[k] {
					st.longest = max(st.longest, time.Since(healed))
				}
			case classInProgress:
				if !refused[k] {
					refused[k] = true
					st.keys++
				}
				next = append(next, k)
			case classUnavailable:
				st.unavailable++
				next = append(next, k)
			default:
				require.FailNow(t, "unexpected answer after healing", c)
			}
		}
		pending = next
		if len(pending) > 0 {
			time.Sleep(100 * time.Millisecond) // pacing, not synchronisation
		}
	}
	return st
}

// inProgressRecords counts the locks in Redis, read directly (not through
// the proxy): after an outage, each is an acquire that ran in Redis though
// idemproxy gave up waiting for its answer.
func inProgressRecords(t *testing.T, s *faultStack) int {
	t.Helper()
	rdb := s.redis.Client(t)
	n := 0
	iter := rdb.Scan(t.Context(), 0, "idemproxy:*", 100).Iterator()
	for iter.Next(t.Context()) {
		if st, err := rdb.HGet(t.Context(), iter.Val(), "st").Result(); err == nil && st == "p" {
			n++
		}
	}
	require.NoError(t, iter.Err())
	return n
}
