package envoy

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// stormPath is the job of the storms: slow enough (300 ms) that the
// duplicates arriving while the first still runs get 409, which is the case
// where two requests could both run; any arriving after it get the replay.
// The split between the two depends on how fast the machine sends.
const stormPath = "/slow?delay=300ms"

// stormConfig gives the storms generous timeouts: Redis 5 s instead of 1 s,
// Envoy's message_timeout 10 s instead of 2 s. On a 2-core machine shared
// with other test runs, a CPU-starved idemproxy built with -race can take
// seconds to get through 1,000 streams, and with the shipped timeouts it then
// fails closed (503, Envoy's 504; still one execution, see docs/reliability.md).
// The storms test that the lock admits one request and that nothing else
// errs, not how fast a shared machine is.
func stormConfig(replicas int) faultConfig {
	return faultConfig{
		replicas:      replicas,
		idemproxyArgs: []string{"--redis-timeout", "5s"},
		envoyEdits:    [][2]string{{"message_timeout: 2s", "message_timeout: 10s"}},
	}
}

// TestFaults_Storm: 1,000 concurrent requests with one key run once; 100
// keys with 20 concurrent duplicates each run 100 times. The storms are
// not parallel: they would starve the TTL-bound tests that are.
func TestFaults_Storm(t *testing.T) {
	s := startFaultStack(t, stormConfig(1))
	c := newStormClient(t, s, 1000)

	t.Run("1000 concurrent requests with one key execute once", func(t *testing.T) {
		oneKeyStorm(t, s, c, "storm-one-key")
	})
	t.Run("100 keys with 20 concurrent duplicates each execute 100 times", func(t *testing.T) {
		manyKeyStorm(t, s, c, "storm-100-keys")
	})
}

// TestFaults_StormTwoReplicas: the storms again with two idemproxy replicas
// behind Envoy's one cluster: the lock in Redis, not the replica, decides.
func TestFaults_StormTwoReplicas(t *testing.T) {
	s := startFaultStack(t, stormConfig(2))
	c := newStormClient(t, s, 1000)

	t.Run("1000 concurrent requests with one key execute once", func(t *testing.T) {
		oneKeyStorm(t, s, c, "two-replicas-one-key")
	})
	t.Run("100 keys with 20 concurrent duplicates each execute 100 times", func(t *testing.T) {
		manyKeyStorm(t, s, c, "two-replicas-100-keys")
	})
	t.Run("both replicas served streams", func(t *testing.T) {
		var served []float64
		for _, r := range s.replicas {
			served = append(served, metricFamily(t, r.adminURL, "idemproxy_requests_total"))
		}
		logFigures(t, "two-replicas-split", "requests_per_replica", fmt.Sprint(served))
		for i, n := range served {
			require.Positive(t, n, "replica %d served no stream", i+1)
		}
	})
}

// oneKeyStorm sends 1,000 requests with one key at once: exactly one runs,
// every other answer is a 409 in-progress or a replay of that one run.
func oneKeyStorm(t *testing.T, s *faultStack, c *http.Client, scenario string) {
	const n = 1000
	key := newKey(t)
	rs, wall := storm(n, func(int) reply { return fire(c, s.url+stormPath, key) })
	counts := tally(rs)
	execs := s.executions(t, key)
	logFigures(t, scenario, "requests", n, "backend_executions", execs, "statuses", fmt.Sprint(counts),
		"latency", "{"+latencies(rs)+"}", "wall", wall.Round(time.Millisecond))

	require.Equal(t, 1, execs, "backend executions")
	require.Equal(t, 1, counts[classExecuted], "%v", counts)
	require.Equal(t, n, counts[classExecuted]+counts[classReplayed]+counts[classInProgress],
		"every other answer is a 409 or a replay, never a 5xx: %v", counts)
	var first string
	for _, r := range rs {
		if classify(r) == classExecuted {
			first = string(r.body)
		}
	}
	for _, r := range rs {
		if r.replayed() {
			require.Equal(t, first, string(r.body), "a replay is the one execution's response")
		}
	}
}

// manyKeyStorm sends 20 concurrent duplicates of each of 100 keys, in waves
// of 20 keys (400 requests in flight), which keeps Envoy's default circuit
// breaker (1,024 requests to the idemproxy cluster) out of the picture.
func manyKeyStorm(t *testing.T, s *faultStack, c *http.Client, scenario string) {
	const keys, dups, keysPerWave = 100, 20, 20
	names := make([]string, keys)
	for i := range names {
		names[i] = newKey(t)
	}
	var all []reply
	var wall time.Duration
	for w := 0; w < keys; w += keysPerWave {
		rs, d := storm(keysPerWave*dups, func(i int) reply { return fire(c, s.url+stormPath, names[w+i/dups]) })
		all, wall = append(all, rs...), wall+d
	}
	counts := tally(all)
	st := s.stats(t)
	execs := 0
	for _, k := range names {
		execs += st.Keys[k]
	}
	logFigures(t, scenario, "requests", keys*dups, "keys", keys, "backend_executions", execs,
		"statuses", fmt.Sprint(counts), "latency", "{"+latencies(all)+"}", "wall", wall.Round(time.Millisecond))

	for _, k := range names {
		require.Equal(t, 1, st.Keys[k], "backend executions of one key")
	}
	require.Equal(t, keys, counts[classExecuted], "%v", counts)
	require.Equal(t, keys*dups, counts[classExecuted]+counts[classReplayed]+counts[classInProgress],
		"every other answer is a 409 or a replay, never a 5xx: %v", counts)
}

// TestFaults_RedisRestart: Redis restarts empty (no persistence) under a
// running idemproxy. Readiness and gRPC health go NOT_SERVING and back, and
// idemproxy reconnects by itself. With the defaults, what Redis forgot is
// refused with 503 store-reset (a completed key, and a key whose request
// was in flight across the restart), never run again; with
// --on-store-reset=accept, the opt-in, both run a second time, which is
// what the test catches.
func TestFaults_RedisRestart(t *testing.T) {
	t.Parallel()
	for _, accept := range []bool{false, true} {
		name := "default refuses what Redis forgot"
		if accept {
			name = "accept runs it again"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := []string{"--lock-ttl", "2s", "--heartbeat", "300ms", "--health-interval", "200ms"}
			if accept {
				args = append(args, "--on-store-reset", "accept")
			}
			redisRestart(t, startFaultStack(t, faultConfig{idemproxyArgs: args}), accept)
		})
	}
}

// redisRestart runs TestFaults_RedisRestart on s.
func redisRestart(t *testing.T, s *faultStack, accept bool) {
	done, inFlight := newKey(t), newKey(t)
	before := s.do(t, "POST", "/charge", "", "Idempotency-Key", done)
	require.Equal(t, classExecuted, classify(before))
	require.Equal(t, classReplayed, classify(s.do(t, "POST", "/charge", "", "Idempotency-Key", done)))

	slow := s.url + "/slow?delay=3s"
	firstRun := make(chan reply, 1)
	go func() { firstRun <- fire(s.client, slow, inFlight) }()
	testenv.WaitFor(t, 10*time.Second, "the in-flight request at the backend", func() bool { return s.executions(t, inFlight) == 1 })

	// Stop, then start: a restart slow enough for readiness to notice.
	stopped := time.Now()
	s.redis.Stop()
	testenv.WaitFor(t, 10*time.Second, "readiness to report Redis gone", func() bool {
		return readyz(s.adminURL) == http.StatusServiceUnavailable &&
			grpcHealth(t, s.replicas[0].grpcAddr) == healthpb.HealthCheckResponse_NOT_SERVING
	})
	notServing := time.Since(stopped)
	s.redis.Restart(t)
	started := time.Now()
	testenv.WaitFor(t, 10*time.Second, "readiness after the restart", func() bool {
		return readyz(s.adminURL) == http.StatusOK && grpcHealth(t, s.replicas[0].grpcAddr) == serving
	})
	ready := time.Since(started)
	select {
	case <-s.idemproxy.Done():
		require.FailNow(t, "idemproxy exited", "%v", s.idemproxy.Err())
	default:
	}

	// The in-flight key's lock is gone. The first run's response is then
	// not stored (lease lost), but its client still gets it.
	dup := fire(s.client, slow, inFlight)
	require.Equal(t, classExecuted, classify(testenv.Receive(t, firstRun, 15*time.Second, "the first run's reply")),
		"the first run's client still gets its response")
	again := fire(s.client, slow, inFlight)
	after := s.do(t, "POST", "/charge", "", "Idempotency-Key", done)

	st := s.stats(t)
	lost := metricFamily(t, s.adminURL, "idemproxy_leases_lost_total")
	logFigures(t, "redis-restart", "accept", accept, "not_serving_after_stop", notServing.Round(time.Millisecond),
		"serving_after_start", ready.Round(time.Millisecond),
		"executions_completed_key", st.Keys[done], "executions_in_flight_key", st.Keys[inFlight],
		"duplicate", classify(dup), "retry_completed_key", classify(after),
		"leases_lost_renew", s.metric(t, `idemproxy_leases_lost_total{stage="renew"}`),
		"leases_lost_complete", s.metric(t, `idemproxy_leases_lost_total{stage="complete"}`),
		"responses_lease_lost", s.metric(t, `idemproxy_responses_total{result="lease_lost"}`))
	require.Positive(t, lost, "the first run's lease loss is counted")
	if accept {
		require.Equal(t, classExecuted, classify(dup), "accept: the duplicate runs, Redis forgot the lock")
		require.Equal(t, classReplayed, classify(again))
		require.Equal(t, string(dup.body), string(again.body), "the duplicate's response is the one stored")
		require.Equal(t, classExecuted, classify(after), "accept: the completed record was lost, the key runs again")
		require.NotEqual(t, chargeID(t, before.body), chargeID(t, after.body))
		require.Equal(t, 2, st.Keys[done])
		require.Equal(t, 2, st.Keys[inFlight])
		require.EqualValues(t, 1, st.Fences[inFlight], "the fence counter was lost too: both grants got fence 1")
		return
	}
	for what, r := range map[string]reply{"the in-flight key's duplicate": dup, "its retry": again, "the completed key's retry": after} {
		require.Equal(t, classStoreReset, classify(r), what)
	}
	require.Equal(t, 1, st.Keys[done], "never a second run")
	require.Equal(t, 1, st.Keys[inFlight], "never a second run")
}

// TestFaults_LongJob: a job lasting 5 lock TTLs keeps its lock through the
// watchdog; duplicates sent all along get 409, then the replay. The TTL is
// 2 s rather than 1 s: with 1 s and a 300 ms heartbeat, a machine that
// starves idemproxy of CPU for 0.7 s loses the lease, and this test is about
// the watchdog, not about starvation (lost leases are scenario 6).
func TestFaults_LongJob(t *testing.T) {
	t.Parallel()
	const ttl, heartbeat, job = 2 * time.Second, 500 * time.Millisecond, 10 * time.Second
	s := startFaultStack(t, faultConfig{idemproxyArgs: []string{
		"--lock-ttl", ttl.String(), "--heartbeat", heartbeat.String()}})
	key := newKey(t)
	url := s.url + "/slow?delay=" + job.String()
	start := time.Now()
	firstRun := make(chan reply, 1)
	go func() { firstRun <- fire(s.client, url, key) }()
	// Duplicates start once the first request holds the lock, never before.
	testenv.WaitFor(t, 10*time.Second, "the job at the backend", func() bool { return s.executions(t, key) == 1 })

	var dups []reply
	var sentAt []time.Duration
	tick := time.NewTicker(250 * time.Millisecond) // pacing, not synchronisation
	defer tick.Stop()
	var first reply
	giveUp := time.After(job + 30*time.Second)
	for running := true; running; {
		select {
		case first = <-firstRun:
			running = false
		case <-giveUp:
			require.FailNow(t, "the long job never answered")
		case <-tick.C:
			sentAt = append(sentAt, time.Since(start))
			dups = append(dups, fire(s.client, url, key))
		}
	}
	jobTime := time.Since(start)
	replay := fire(s.client, url, key)
	renewed := s.metric(t, `idemproxy_lock_renewals_total{result="ok"}`)
	lost := metricFamily(t, s.adminURL, "idemproxy_leases_lost_total")
	logFigures(t, "long-job", "job", jobTime.Round(time.Millisecond), "lock_ttl", ttl, "heartbeat", heartbeat,
		"duplicates", len(dups), "statuses", fmt.Sprint(tally(append(dups, first, replay))),
		"last_409_sent_at", last409(dups, sentAt).Round(time.Millisecond), "backend_executions", s.executions(t, key),
		"renewals_ok", renewed, "renewals_error", s.metric(t, `idemproxy_lock_renewals_total{result="error"}`),
		"leases_lost", lost)

	require.Equal(t, classExecuted, classify(first))
	// Every duplicate is a 409 until the job is done; one sent as it
	// finished may already get the replay.
	refused := 0
	for i, d := range dups {
		if c := classify(d); c != classInProgress || refused < i {
			require.Equal(t, classReplayed, c, "duplicate sent at %v", sentAt[i])
			require.Equal(t, string(first.body), string(d.body))
			continue
		}
		refused++
		retry, err := strconv.Atoi(d.header.Get("Retry-After"))
		require.NoError(t, err)
		require.True(t, retry >= 1 && retry <= 2, "Retry-After %d: never past the lock's remaining TTL, at most 2 s", retry)
	}
	require.Positive(t, refused)
	require.Greater(t, sentAt[refused-1], 4*ttl, "duplicates kept getting 409 past 4 lock TTLs")
	require.Equal(t, classReplayed, classify(replay))
	require.Equal(t, string(first.body), string(replay.body))
	require.Equal(t, 1, s.executions(t, key))
	// A 2 s lock alive for 10 s was extended at least 4 times.
	require.GreaterOrEqual(t, renewed, 4.0)
	require.Zero(t, lost)
}

// last409 is when the last duplicate answered 409 was sent.
func last409(dups []reply, sentAt []time.Duration) time.Duration {
	var at time.Duration
	for i, d := range dups {
		if classify(d) == classInProgress {
			at = sentAt[i]
		}
	}
	return at
}
