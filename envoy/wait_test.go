package envoy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Waiting duplicates (route /wait/ of the shipped envoy.yaml: metadata
// x-idemproxy-in-progress: wait, x-idemproxy-max-wait: 25s): a retry of a
// request still running is held and gets its replay, through real Envoy
// and real Redis.

// scriptCalls is how many scripts (EVALSHA and EVAL) Redis has run: one
// per round trip of idemproxy's request path.
func scriptCalls(t testing.TB, c *redis.Client) int {
	t.Helper()
	return commandCalls(t, c, "evalsha", "eval")
}

// commandCalls is how many times Redis ran the commands named, so far.
func commandCalls(t testing.TB, c *redis.Client, commands ...string) int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	n := 0
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !slices.Contains(commands, strings.TrimPrefix(name, "cmdstat_")) {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		v, err := strconv.Atoi(calls)
		require.NoError(t, err, line)
		n += v
	}
	return n
}

// percentile of sorted durations, p in (0, 1].
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// TestWait_DuplicatesGetTheReplay: an original that takes 2 s, and 50
// duplicates sent 0.5 s in over two idemproxy replicas; all get the
// original's response as a replay, the backend runs once, and the waiters
// cost Redis their own acquire and nothing per wait. The re-check is an
// hour, so only the completion notice can have woken them.
func TestWait_DuplicatesGetTheReplay(t *testing.T) {
	fs := startFaultStack(t, faultConfig{replicas: 2, idemproxyArgs: []string{"--wait-recheck", "1h"}})
	rc := fs.redis.Client(t)
	key := newKey(t)
	hdr := []string{"Idempotency-Key", key, "Content-Type", "application/json"}
	const body, n = `{"amount":5000}`, 50

	// Warm: Redis has both scripts, so no NOSCRIPT retry is counted.
	for range 2 {
		require.Equal(t, http.StatusOK, fs.do(t, "POST", "/wait/charge", body, "Idempotency-Key", newKey(t)).status)
	}
	before, subsBefore := scriptCalls(t, rc), commandCalls(t, rc, "ssubscribe")
	first := fs.goDo("POST", "/wait/slow?delay=2s", body, hdr...)
	time.Sleep(500 * time.Millisecond)
	dups := make([]<-chan result, n)
	for i := range dups {
		dups[i] = fs.goDo("POST", "/wait/slow?delay=2s", body, hdr...)
	}
	orig := await(t, first, 15*time.Second, "the original")
	require.Equal(t, http.StatusOK, orig.status, "%s", orig.body)
	require.False(t, orig.replayed())

	lat := make([]time.Duration, 0, n)
	for i, ch := range dups {
		r := await(t, ch, 30*time.Second, fmt.Sprintf("duplicate %d", i))
		require.Equal(t, orig.status, r.status, "duplicate %d: %s", i, r.body)
		require.True(t, r.replayed(), "duplicate %d gets the replay", i)
		require.Equal(t, string(orig.body), string(r.body), "duplicate %d: byte for byte", i)
		lat = append(lat, r.done.Sub(orig.done))
	}
	require.Equal(t, 1, fs.executions(t, key), "the backend ran once")

	replayed, renewals := 0.0, 0.0
	for i, r := range fs.replicas {
		w := testenv.Metric(t, r.adminURL+"/metrics", `idemproxy_waits_total{result="replayed"}`)
		require.Positive(t, w, "replica %d held waiters", i+1)
		replayed += w
		renewals += testenv.MetricSum(t, r.adminURL+"/metrics", "idemproxy_lock_renewals_total")
		testenv.WaitFor(t, 5*time.Second, "replica's waiters gone", func() bool {
			return testenv.Metric(t, r.adminURL+"/metrics", "idemproxy_waiters") == 0
		})
	}
	require.EqualValues(t, n, replayed)

	// The original's acquire and completion, its lease renewals, and
	// each duplicate's own acquire; beyond them, per replica one shared
	// read when its subscription became active and one when the notice
	// came, whatever the number of waiters there. Two more are allowed,
	// not per waiter: a duplicate whose look came before the completion
	// but whose wait began after its replica's other waiters had left
	// must subscribe and read again (or it would miss the completion),
	// and a Pub/Sub reconnect re-subscribes, which prompts a read. CI saw
	// 5 such reads once (57 scripts for 50 waiters).
	calls, subs := scriptCalls(t, rc)-before, commandCalls(t, rc, "ssubscribe")-subsBefore
	peeks, perReplica := 0.0, []float64{}
	for _, r := range fs.replicas {
		p := testenv.Metric(t, r.adminURL+"/metrics", `idemproxy_redis_duration_seconds{op="peek",result="ok"}`)
		peeks += p
		perReplica = append(perReplica, p)
	}
	extra := calls - 2 - int(renewals) - n
	require.GreaterOrEqual(t, extra, 0)
	require.LessOrEqual(t, extra, 2*len(fs.replicas)+2, "no round trip per waiter: %d scripts for %d waiters; shared reads per replica %v, SSUBSCRIBEs %d",
		calls, n, perReplica, subs)

	slices.Sort(lat)
	logFigures(t, "wait-replay", "waiters", n, "replicas", len(fs.replicas), "executions", fs.executions(t, key),
		"after_original_p50", percentile(lat, 0.5).Round(10*time.Microsecond),
		"p99", percentile(lat, 0.99).Round(10*time.Microsecond),
		"max", lat[len(lat)-1].Round(10*time.Microsecond),
		"redis_scripts", calls, "shared_reads", peeks, "ssubscribes", subs, "scripts_per_waiter", fmt.Sprintf("%.2f", float64(calls-2-int(renewals))/n))
}

// TestWait_Ends: every way a wait ends, one subtest each, on one stack
// whose /wait/ route waits at most 3 s.
func TestWait_Ends(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{
		{"x-idemproxy-max-wait, value: 25s", "x-idemproxy-max-wait, value: 3s"}},
		idemproxyArgs: []string{"--max-waiters", "3"}})
	keyed := func(key string) []string { return []string{"Idempotency-Key", key} }

	t.Run("the original gives its key back: one waiter runs, the others get its replay", func(t *testing.T) {
		key := newKey(t)
		first := s.goDo("POST", "/wait/busy?times=1&delay=500ms", "", keyed(key)...)
		time.Sleep(200 * time.Millisecond)
		dups := []<-chan result{}
		for range 3 {
			dups = append(dups, s.goDo("POST", "/wait/busy?times=1&delay=500ms", "", keyed(key)...))
		}
		orig := await(t, first, 10*time.Second, "the original")
		require.Equal(t, http.StatusTooManyRequests, orig.status, "not stored: the key is given back")
		ran, replays := 0, 0
		var bodies []string
		for i, ch := range dups {
			r := await(t, ch, 10*time.Second, fmt.Sprintf("waiter %d", i))
			require.Equal(t, http.StatusOK, r.status, "waiter %d: %s", i, r.body)
			if r.replayed() {
				replays++
			} else {
				ran++
			}
			bodies = append(bodies, string(r.body))
		}
		require.Equal(t, 1, ran, "the waiters race for the key as new requests would: one wins")
		require.Equal(t, 2, replays, "the others wait on and get the winner's response")
		require.Equal(t, bodies[0], bodies[1])
		require.Equal(t, bodies[1], bodies[2])
		require.Equal(t, 2, s.executions(t, key), "the original and the winner")
	})
	t.Run("an unknown outcome: the waiter gets 409 outcome-unknown", func(t *testing.T) {
		key := newKey(t)
		ctx, cancel := context.WithCancel(t.Context())
		first := make(chan error, 1)
		go func() {
			_, err := s.tryDoCtx(ctx, "POST", "/wait/slow?delay=5s", "", keyed(key)...)
			first <- err
		}()
		time.Sleep(300 * time.Millisecond)
		dup := s.goDo("POST", "/wait/slow?delay=5s", "", keyed(key)...)
		time.Sleep(300 * time.Millisecond)
		cancel() // the original's client hangs up while the backend runs
		require.Error(t, testenv.Receive(t, first, 5*time.Second, "the original's end"))
		r := await(t, dup, 10*time.Second, "the waiter")
		require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
		require.Equal(t, "urn:idemproxy:problem:outcome-unknown", r.problemType())
		require.Equal(t, 1, s.executions(t, key))
	})
	t.Run("the max wait passes: 409 in-progress with Retry-After", func(t *testing.T) {
		key := newKey(t)
		first := s.goDo("POST", "/wait/slow?delay=5s", "", keyed(key)...)
		time.Sleep(300 * time.Millisecond)
		r := s.do(t, "POST", "/wait/slow?delay=5s", "", keyed(key)...)
		require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
		require.Equal(t, "urn:idemproxy:problem:in-progress", r.problemType())
		require.NotEmpty(t, r.header.Get("Retry-After"))
		require.GreaterOrEqual(t, r.elapsed, 3*time.Second, "held for the route's max wait")
		orig := await(t, first, 10*time.Second, "the original")
		require.Equal(t, http.StatusOK, orig.status)
		require.Equal(t, 1, s.executions(t, key))
	})
	t.Run("the waiter's client hangs up: its waiter is freed at once", func(t *testing.T) {
		key := newKey(t)
		gone := s.metric(t, `idemproxy_waits_total{result="gone"}`)
		first := s.goDo("POST", "/wait/slow?delay=3s", "", keyed(key)...)
		time.Sleep(300 * time.Millisecond)
		ctx, cancel := context.WithCancel(t.Context())
		dup := make(chan error, 1)
		go func() {
			_, err := s.tryDoCtx(ctx, "POST", "/wait/slow?delay=3s", "", keyed(key)...)
			dup <- err
		}()
		testenv.WaitFor(t, 5*time.Second, "the duplicate waiting", func() bool { return s.metric(t, "idemproxy_waiters") >= 1 })
		cancel()
		require.Error(t, testenv.Receive(t, dup, 5*time.Second, "the duplicate's end"))
		testenv.WaitFor(t, 2*time.Second, "the waiter freed", func() bool {
			return s.metric(t, `idemproxy_waits_total{result="gone"}`) == gone+1
		})
		require.Zero(t, s.metric(t, "idemproxy_waiters"), "while the original still runs")
		orig := await(t, first, 10*time.Second, "the original")
		require.Equal(t, http.StatusOK, orig.status)
		require.Equal(t, 1, s.executions(t, key))
	})
	t.Run("beyond --max-waiters the duplicate gets 409 at once", func(t *testing.T) {
		key := newKey(t)
		first := s.goDo("POST", "/wait/slow?delay=2s", "", keyed(key)...)
		time.Sleep(300 * time.Millisecond)
		held := []<-chan result{}
		for range 3 {
			held = append(held, s.goDo("POST", "/wait/slow?delay=2s", "", keyed(key)...))
		}
		testenv.WaitFor(t, 5*time.Second, "three waiting", func() bool { return s.metric(t, "idemproxy_waiters") == 3 })
		r := s.do(t, "POST", "/wait/slow?delay=2s", "", keyed(key)...)
		require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
		require.Equal(t, "urn:idemproxy:problem:in-progress", r.problemType())
		require.Less(t, r.elapsed, 2*time.Second, "not held")
		await(t, first, 10*time.Second, "the original")
		for i, ch := range held {
			require.True(t, await(t, ch, 10*time.Second, fmt.Sprintf("waiter %d", i)).replayed())
		}
		require.Equal(t, 1, s.executions(t, key))
	})
}

// TestWait_RedisCut: Redis goes away while duplicates wait. A failed read
// decides nothing: they keep waiting, looking again, and once their reads
// have failed for 2 s (an outage, not a failover's moment) they are told
// 503, well before the route's max wait (25 s); never let through, and the
// key runs once.
func TestWait_RedisCut(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--wait-recheck", "200ms", "--finalize-timeout", "1s")
	key := newKey(t)
	hdr := []string{"Idempotency-Key", key}
	first := s.goDo("POST", "/wait/slow?delay=2s", "", hdr...)
	time.Sleep(300 * time.Millisecond)
	dups := []<-chan result{}
	for range 3 {
		dups = append(dups, s.goDo("POST", "/wait/slow?delay=2s", "", hdr...))
	}
	testenv.WaitFor(t, 5*time.Second, "three waiting", func() bool { return s.metric(t, "idemproxy_waiters") == 3 })
	s.redis.Stop()
	stopped := time.Now()
	// Re-checks (200 ms) have failed by now: still waiting.
	time.Sleep(500 * time.Millisecond)
	for i, ch := range dups {
		select {
		case r := <-ch:
			t.Fatalf("waiter %d answered while it should still wait: %d %s", i, r.status, r.body)
		default:
		}
	}
	require.EqualValues(t, 3, s.metric(t, "idemproxy_waiters"))
	for i, ch := range dups {
		r := await(t, ch, 10*time.Second, fmt.Sprintf("waiter %d", i))
		require.Equal(t, http.StatusServiceUnavailable, r.status, "waiter %d: %s", i, r.body)
		require.Equal(t, "urn:idemproxy:problem:store-unavailable", r.problemType())
	}
	t.Logf("the waiters got their 503 %v after Redis stopped", time.Since(stopped).Round(10*time.Millisecond))
	await(t, first, 10*time.Second, "the original")
	require.Equal(t, 1, s.executions(t, key), "the waiters never reached the backend")
	require.EqualValues(t, 3, s.metric(t, `idemproxy_waits_total{result="error"}`))
}

// TestWait_Thousand holds 1,000 duplicates of one key at once (the
// default --max-waiters) and reports what each costs idemproxy; all get
// the replay, and every goroutine and subscription is gone after.
func TestWait_Thousand(t *testing.T) {
	const n = 1000
	s := startStack(t)
	rc := s.redis.Client(t)
	key := newKey(t)
	hdr := []string{"Idempotency-Key", key}
	s.client.Transport.(*http.Transport).MaxIdleConnsPerHost = n + 1
	goroutines := func() float64 { return s.metric(t, "go_goroutines") }
	rss := func() int64 {
		m, err := testenv.ProcessMemory(s.idemproxy.Pid())
		require.NoError(t, err)
		return m.RSS
	}
	// Warm: connections and buffers that any traffic makes.
	for range 20 {
		s.do(t, "POST", "/wait/charge", "", "Idempotency-Key", newKey(t))
	}
	g0, m0 := goroutines(), rss()

	first := s.goDo("POST", "/wait/slow?delay=10s", "", hdr...)
	time.Sleep(300 * time.Millisecond)
	dups := make([]<-chan result, n)
	for i := range dups {
		dups[i] = s.goDo("POST", "/wait/slow?delay=10s", "", hdr...)
	}
	testenv.WaitFor(t, 8*time.Second, "1,000 waiting", func() bool { return s.metric(t, "idemproxy_waiters") == n })
	g1, m1 := goroutines(), rss()
	channels, err := rc.PubSubShardChannels(t.Context(), "*").Result()
	require.NoError(t, err)
	require.Len(t, channels, 1, "one shard channel for the key, whatever the number of waiters")

	orig := await(t, first, 20*time.Second, "the original")
	require.Equal(t, http.StatusOK, orig.status)
	for i, ch := range dups {
		r := await(t, ch, 20*time.Second, fmt.Sprintf("waiter %d", i))
		require.True(t, r.replayed(), "waiter %d: %d %s", i, r.status, r.body)
	}
	require.Equal(t, 1, s.executions(t, key))
	testenv.WaitFor(t, 10*time.Second, "every waiter's goroutines gone", func() bool {
		return goroutines() <= g0+5 && s.metric(t, "idemproxy_waiters") == 0
	})
	testenv.WaitFor(t, 5*time.Second, "the subscription gone", func() bool {
		ch, err := rc.PubSubShardChannels(t.Context(), "*").Result()
		return err == nil && len(ch) == 0
	})
	logFigures(t, "wait-1000", "waiters", n,
		"goroutines_per_waiter", fmt.Sprintf("%.1f", (g1-g0)/n),
		"rss_per_waiter_kib", fmt.Sprintf("%.1f", float64(m1-m0)/n), // ProcessMemory is in KiB
		"goroutines_after", goroutines()-g0)
}
