package envoy

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
	"github.com/idemproxy/idemproxy/redisstore"
)

// keyOutcome is what one load client saw for one key: every reply until
// the first 200, then the retry that must replay it.
type keyOutcome struct {
	key     string
	replies []reply
	first   reply
	replay  reply
}

// loadKeys runs workers clients until stop is closed; each takes new keys
// one after the other, sends a charge until it gets a 200 (retrying 503
// and 409 every 50 ms, as a client would), then retries once. It never
// touches the test: the outcomes arrive on the returned channel.
func loadKeys(s *stack, workers int, stop <-chan struct{}) <-chan []keyOutcome {
	out := make(chan []keyOutcome, 1)
	var mu sync.Mutex
	var all []keyOutcome
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := keyOutcome{key: randomKey()}
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
					r := s.send("POST", "/charge", "", "Idempotency-Key", o.key)
					o.replies = append(o.replies, r)
					if r.status == http.StatusOK {
						o.first = r
						break
					}
					time.Sleep(50 * time.Millisecond) // a client's pacing
				}
				o.replay, _ = s.tryDo("POST", "/charge", "", "Idempotency-Key", o.key)
				mu.Lock()
				all = append(all, o)
				mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); out <- all }()
	return out
}

// randomKey is newKey for goroutines, which must not touch the test.
func randomKey() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "k-" + hex.EncodeToString(b[:])
}

// checkOutcomes requires every key to have run exactly once and replayed
// its response byte for byte, and returns the statuses of every reply.
func checkOutcomes(t *testing.T, s *stack, outs []keyOutcome) map[string]int {
	t.Helper()
	st := s.stats(t)
	statuses := map[string]int{}
	for _, o := range outs {
		for _, r := range append(o.replies, o.replay) {
			statuses[classify(r)]++
		}
		require.Equal(t, classExecuted, classify(o.first), "key %s got a 200 in the end: %v", o.key, o.replies)
		require.Equal(t, 1, st.Keys[o.key], "key %s ran once", o.key)
		require.True(t, o.replay.replayed(), "key %s: %d %s", o.key, o.replay.status, o.replay.body)
		require.Equal(t, string(o.first.body), string(o.replay.body), "byte for byte")
	}
	return statuses
}

// hashes counts the records (of any state) on one server: not their
// fence counters, not the store-reset markers.
func hashes(t *testing.T, srv *redistopo.Server) int {
	t.Helper()
	keys, err := srv.Client(t).Keys(t.Context(), redisstore.DefaultPrefix+"{*}").Result()
	require.NoError(t, err)
	return len(keys)
}

// TestTopology_Cluster runs idemproxy with its defaults (--redis-min-replicas all) on a 3+3
// Redis Cluster: keys spread over every primary run once and replay; a
// SCRIPT FLUSH on every node mid-load is served without an error; slots
// resharded under load never run a key twice, with transient errors only.
func TestTopology_Cluster(t *testing.T) {
	cl := redistopo.NewCluster(t)
	backend := startBackendOnly(t)
	// A replica's acknowledgement takes microseconds on loopback, but a
	// CI machine running other tests can starve it for a few hundred
	// milliseconds: the wait is generous here (the failover tests measure
	// the tight one).
	s := topoFrontend(t, backend, "cluster", clusterURL(cl),
		"--redis-replica-timeout", "800ms", "--redis-timeout", "1s", "--health-interval", "250ms")

	ok := t.Run("keys spread over every primary run once and replay", func(t *testing.T) {
		for range 60 {
			chargeAndReplay(t, s)
		}
		primaries, err := cl.Primaries(t.Context())
		require.NoError(t, err)
		require.Len(t, primaries, 3)
		for _, p := range primaries {
			require.Positive(t, hashes(t, p), "primary %s holds keys", p.Addr)
		}
		require.EqualValues(t, 3, s.metric(t, `idemproxy_redis_primaries{state="serving"}`))
		require.Positive(t, s.metric(t, `idemproxy_redis_pool_conn_total_current{mode="cluster"}`))
	})

	ok = ok && t.Run("an ACL user with least privileges, on every node", func(t *testing.T) {
		// What a managed cluster hands out: its own keys only, no
		// dangerous commands (CONFIG among them: persistence then reads
		// as unknown), the cluster topology readable.
		for _, n := range cl.Running() {
			require.NoError(t, n.Client(t).Do(t.Context(), "acl", "setuser", "idemproxy", "reset", "on", ">s3cret-pw",
				"~idemproxy:*", "&idemproxy:*", "+@all", "-@dangerous", "+info", "+cluster|slots", "+cluster|shards", "+cluster|info").Err())
		}
		u := strings.Replace(clusterURL(cl), "redis://", "redis://idemproxy:s3cret-pw@", 1)
		acl := topoFrontend(t, backend, "cluster", u, "--redis-replica-timeout", "250ms")
		for range 20 {
			k := newKey(t)
			first := acl.do(t, "POST", "/charge", "", "Idempotency-Key", k)
			again := acl.do(t, "POST", "/charge", "", "Idempotency-Key", k)
			require.Equal(t, classExecuted, classify(first))
			require.Equal(t, classReplayed, classify(again))
			require.Equal(t, 1, acl.executions(t, k))
		}
		require.EqualValues(t, 1, acl.metric(t, `idemproxy_redis_persistence{kind="unknown"}`), "CONFIG GET refused")
	})

	ok = ok && t.Run("SCRIPT FLUSH on every node mid-load is served", func(t *testing.T) {
		stop := make(chan struct{})
		done := loadKeys(s, 16, stop)
		time.Sleep(500 * time.Millisecond) // load before the flush, not synchronisation
		for _, n := range cl.Running() {
			require.NoError(t, n.Client(t).ScriptFlush(t.Context()).Err())
		}
		time.Sleep(time.Second) // load after it
		close(stop)
		outs := testenv.Receive(t, done, 30*time.Second, "the load")
		statuses := checkOutcomes(t, s, outs)
		logFigures(t, "cluster-script-flush", "keys", len(outs), "statuses", fmt.Sprint(statuses))
		require.Zero(t, statuses[classUnavailable], "no request failed for a flushed script")
	})

	ok = ok && t.Run("resharding under load runs no key twice", func(t *testing.T) {
		primaries, err := cl.Primaries(t.Context())
		require.NoError(t, err)
		stop := make(chan struct{})
		done := loadKeys(s, 16, stop)
		time.Sleep(300 * time.Millisecond) // load before the reshard, not synchronisation
		start := time.Now()
		slots := 1000
		if f, _ := testenv.RedisFlavor(); f == "valkey" {
			// Valkey 8's CLUSTER SETSLOT waits for the replicas: under
			// this load 1000 slots took about a minute (Redis: seconds);
			// 250 still move hundreds of keys mid-load, at a CI cost.
			slots = 250
		}
		require.NoError(t, cl.Reshard(t.Context(), primaries[0], primaries[1], slots))
		took := time.Since(start)
		time.Sleep(300 * time.Millisecond) // and after it
		close(stop)
		outs := testenv.Receive(t, done, 30*time.Second, "the load")
		statuses := checkOutcomes(t, s, outs)
		logFigures(t, "cluster-reshard", "slots_moved", slots, "reshard_took", took.Round(time.Millisecond),
			"keys", len(outs), "statuses", fmt.Sprint(statuses), "transient_503", statuses[classUnavailable],
			"store_errors", s.metric(t, `idemproxy_requests_total{outcome="store_error"}`))
	})

	ok = ok && t.Run("one evicting primary refuses keyed requests and fails readiness", func(t *testing.T) {
		primaries, err := cl.Primaries(t.Context())
		require.NoError(t, err)
		c := primaries[1].Client(t)
		require.NoError(t, c.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err())
		testenv.WaitFor(t, 10*time.Second, "readiness to fail", func() bool { return readyz(s.adminURL) == http.StatusServiceUnavailable })
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", newKey(t))
		require.Equal(t, classUnavailable, classify(r))
		require.NoError(t, c.ConfigSet(t.Context(), "maxmemory-policy", "noeviction").Err())
		testenv.WaitFor(t, 10*time.Second, "readiness to return", func() bool { return readyz(s.adminURL) == http.StatusOK })
	})

	_ = ok && t.Run("one dead shard does not fail readiness; the other keys are served", func(t *testing.T) {
		// Without full coverage required, the other shards serve on
		// while a primary's slots wait for its replica.
		for _, n := range cl.Running() {
			require.NoError(t, n.Client(t).ConfigSet(t.Context(), "cluster-require-full-coverage", "no").Err())
		}
		primaries, err := cl.Primaries(t.Context())
		require.NoError(t, err)
		victim := primaries[2]
		require.NoError(t, cl.Kill(t.Context(), victim))
		start := time.Now()
		notReady := sampleNotReady(s)
		statuses := map[string]int{}
		for time.Since(start) < 1500*time.Millisecond {
			statuses[classify(s.do(t, "POST", "/charge", "", "Idempotency-Key", newKey(t)))]++
		}
		_, err = cl.WaitPromoted(t.Context(), victim)
		require.NoError(t, err)
		down := notReady()
		logFigures(t, "cluster-dead-shard", "requests", fmt.Sprint(statuses), "not_ready_for", down,
			"primaries_down_metric_seen", s.metric(t, `idemproxy_redis_primaries{state="down"}`))
		require.Zero(t, down, "readiness stayed up")
		require.Positive(t, statuses[classExecuted], "keys on the other shards ran")
		require.NoError(t, cl.Restart(t.Context(), victim))
	})
}
