package envoy

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// failoverKeys is how many slow requests are in flight when a primary dies.
const failoverKeys = 150

// failover is one topology's part of a failover scenario: kill the primary
// that holds the most keys, wait until a replica took over, and bring the
// killed node back as a replica.
type failover struct {
	kill     func(t *testing.T) (killed *redistopo.Server, share string)
	promoted func(t *testing.T, killed *redistopo.Server)
	restart  func(t *testing.T, killed *redistopo.Server)
	// promotions counts the promotions the topology's logs show so far,
	// to tell a second failover (a promoted primary taken for dead in
	// turn, on a loaded machine) from the one the scenario causes.
	promotions func() int
}

// sentinelPromotions is the most +switch-master events one sentinel logged.
func sentinelPromotions(st *redistopo.Sentinel) func() int {
	return func() int {
		most := 0
		for _, sn := range st.Sentinels {
			most = max(most, strings.Count(sn.Output(), "+switch-master"))
		}
		return most
	}
}

// clusterPromotions counts the elections replicas won, over all nodes.
func clusterPromotions(cl *redistopo.Cluster) func() int {
	return func() int {
		n := 0
		for _, node := range cl.Nodes {
			n += strings.Count(node.Output(), "Failover election won")
		}
		return n
	}
}

// runFailover sends failoverKeys slow requests through s, SIGKILLs the
// busiest primary while they run, lets every client retry until it gets a
// 200, and logs the figures. Once a replica took over, 30 new keys show
// what the degraded topology serves, and the killed node is brought back,
// as an orchestrator would (with --redis-min-replicas all, a Sentinel
// primary's new keys wait for it: it is a replica a failover could
// promote). With durable set, every key must have run exactly once and
// replay its first response byte for byte, unless the topology failed over
// a second time: then a response stored on the first promoted primary
// before its replica caught up may be lost (the limit in docs/reliability.md), and no
// more may be lost than were counted unreplicated.
func runFailover(t *testing.T, s *stack, f failover, scenario string, durable bool) {
	t.Helper()
	keys := make([]string, failoverKeys)
	for i := range keys {
		keys[i] = newKey(t)
	}
	const path = "/slow?delay=2s"
	retry := make(chan struct{})
	wait := inFlight(t, s, keys, path, retry)
	promotionsBefore := f.promotions()
	killed, share := f.kill(t)
	start := time.Now()
	close(retry)
	notReady := sampleNotReady(s)
	f.promoted(t, killed)
	promoted := time.Since(start)
	// New keys while the killed node is still down: under Sentinel it is
	// a replica a failover could promote, so with all they are refused
	// (503) until it is back; on a cluster the promoted replica has no
	// replica of its own, so with all they run, with 1 they are refused.
	degraded := map[string]int{}
	for range 30 {
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", newKey(t))
		degraded[classify(r)]++
	}
	f.restart(t, killed)
	restarted := time.Since(start)
	runs := wait()
	settled := time.Since(start)
	unready := notReady()
	fig := countFailover(t, s, path, keys, runs)
	promotions := f.promotions() - promotionsBefore
	st := s.stats(t)
	logFigures(t, scenario, "keys", len(keys), "locks_on_killed_primary", share, "executions", sumKeys(st.Keys, keys),
		"ran_twice", fig.twice, "lost_responses", fig.lost, "lost_final", fmt.Sprint(fig.lostFinal), "first_200", fig.firstOK,
		"statuses", fmt.Sprint(fig.statuses), "new_keys_before_restart", fmt.Sprint(degraded), "promoted_after", promoted.Round(time.Millisecond),
		"restarted_after", restarted.Round(time.Millisecond),
		"not_ready_for", unready.Round(100*time.Millisecond), "all_settled_after", settled.Round(time.Millisecond),
		"unreplicated_completions", s.metric(t, `idemproxy_unreplicated_writes_total{op="complete"}`),
		"complete_retries", s.metric(t, `idemproxy_store_retries_total{op="complete"}`), "promotions", promotions)
	if durable {
		require.Zero(t, fig.twice, "no key ran twice")
		for _, k := range keys {
			require.Equal(t, 1, st.Keys[k], "key %s ran once", k)
		}
		if promotions > 1 {
			require.LessOrEqual(t, float64(fig.lost), s.metric(t, `idemproxy_unreplicated_writes_total{op="complete"}`),
				"a second failover may lose only completions counted unreplicated")
		} else {
			require.Zero(t, fig.lost, "every key replays its first response")
		}
	}
}

// sampleNotReady polls /readyz every 100 ms until the returned function
// is called, which returns for how long it was not 200.
func sampleNotReady(s *stack) func() time.Duration {
	stop, out := make(chan struct{}), make(chan time.Duration, 1)
	go func() {
		var down time.Duration
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				out <- down
				return
			case <-t.C:
				if readyz(s.adminURL) != http.StatusOK {
					down += 100 * time.Millisecond
				}
			}
		}
	}()
	return func() time.Duration {
		close(stop)
		select {
		case d := <-out:
			return d
		case <-time.After(5 * time.Second):
			return -1
		}
	}
}

// sumKeys adds up the executions of keys.
func sumKeys(counts map[string]int, keys []string) int {
	n := 0
	for _, k := range keys {
		n += counts[k]
	}
	return n
}

// clusterFailover kills the cluster primary with the most records.
func clusterFailover(cl *redistopo.Cluster) failover {
	return failover{
		kill: func(t *testing.T) (*redistopo.Server, string) {
			primaries, err := cl.Primaries(t.Context())
			require.NoError(t, err)
			var busiest *redistopo.Server
			most, total := -1, 0
			for _, p := range primaries {
				n := locks(t, p)
				total += n
				if n > most {
					busiest, most = p, n
				}
			}
			require.NoError(t, cl.Kill(t.Context(), busiest))
			return busiest, fmt.Sprintf("%d/%d", most, total)
		},
		promoted: func(t *testing.T, killed *redistopo.Server) {
			_, err := cl.WaitPromoted(t.Context(), killed)
			require.NoError(t, err)
		},
		restart: func(t *testing.T, killed *redistopo.Server) {
			require.NoError(t, cl.Restart(t.Context(), killed))
		},
		promotions: clusterPromotions(cl),
	}
}

// TestTopology_ClusterFailover: 150 slow requests in flight on a 3+3
// cluster, the primary with the most of their keys SIGKILLed, clients
// retrying. With --redis-min-replicas all (the default) every key runs once
// and replays its response; the same run with 0 is reported, not asserted.
func TestTopology_ClusterFailover(t *testing.T) {
	cl := redistopo.NewCluster(t)
	backend := startBackendOnly(t)
	for _, replicas := range []string{"all", "0"} {
		ok := t.Run("min replicas "+replicas, func(t *testing.T) {
			s := topoFrontend(t, backend, "cluster", clusterURL(cl), failoverArgs(replicas)...)
			runFailover(t, s, clusterFailover(cl), "cluster-failover-min-replicas-"+replicas, replicas != "0")
		})
		if !ok {
			return
		}
	}
}

// TestTopology_SentinelFailover: the same on a primary with two replicas
// under Sentinel; idemproxy follows the new primary by itself.
func TestTopology_SentinelFailover(t *testing.T) {
	st := redistopo.NewSentinel(t)
	backend := startBackendOnly(t)
	f := failover{
		kill: func(t *testing.T) (*redistopo.Server, string) {
			p, err := st.Primary(t.Context())
			require.NoError(t, err)
			n := locks(t, p)
			st.Kill(p)
			return p, fmt.Sprintf("%d/%d", n, n)
		},
		promoted: func(t *testing.T, killed *redistopo.Server) {
			_, err := st.WaitFailover(t.Context(), killed)
			require.NoError(t, err)
		},
		restart: func(t *testing.T, killed *redistopo.Server) {
			require.NoError(t, st.Restart(t.Context(), killed))
		},
		promotions: sentinelPromotions(st),
	}
	if !t.Run("an ACL user on the data nodes", func(t *testing.T) {
		for _, n := range st.Data {
			require.NoError(t, n.Client(t).Do(t.Context(), "acl", "setuser", "idemproxy", "reset", "on", ">s3cret-pw",
				"~idemproxy:*", "&idemproxy:*", "+@all", "-@dangerous", "+info").Err())
		}
		// The URL's user:password would be the sentinels'; the data
		// nodes' ACL user goes in query parameters (go-redis's rule).
		acl := topoFrontend(t, backend, "sentinel", sentinelURL(st)+"&username=idemproxy&password=s3cret-pw",
			"--redis-replica-timeout", "250ms") // --redis-min-replicas all, the default
		k := newKey(t)
		require.Equal(t, classExecuted, classify(acl.do(t, "POST", "/charge", "", "Idempotency-Key", k)))
		require.Equal(t, classReplayed, classify(acl.do(t, "POST", "/charge", "", "Idempotency-Key", k)))
		require.Equal(t, 1, acl.executions(t, k))
	}) {
		return
	}
	for _, replicas := range []string{"all", "0"} {
		ok := t.Run("min replicas "+replicas, func(t *testing.T) {
			s := topoFrontend(t, backend, "sentinel", sentinelURL(st), failoverArgs(replicas)...)
			runFailover(t, s, f, "sentinel-failover-min-replicas-"+replicas, replicas != "0")
		})
		if !ok {
			return
		}
	}
}

// TestTopology_SentinelReplicaLag shows what --redis-min-replicas buys.
// Both replicas are frozen and cut off (SIGSTOP, and the primary drops
// their links: replication falls behind, as on a loaded or partitioned
// network) before slow requests arrive; the primary
// is SIGKILLed while they run, the replicas thawed and one promoted, the
// killed node brought back, and every client retries until it gets a 200.
// With all (the default), no lock was granted that a replica lacked: the
// requests were refused (503) and, after the failover, ran once each.
// With 0 they ran at once, their locks died with the primary, and the
// retries ran them a second time.
func TestTopology_SentinelReplicaLag(t *testing.T) {
	st := redistopo.NewSentinel(t)
	backend := startBackendOnly(t)
	for _, replicas := range []string{"all", "0"} {
		ok := t.Run("min replicas "+replicas, func(t *testing.T) {
			s := topoFrontend(t, backend, "sentinel", sentinelURL(st), failoverArgs(replicas)...)
			primary, err := st.Primary(t.Context())
			require.NoError(t, err)
			var frozen []*redistopo.Server
			for _, d := range st.Data {
				if d != primary {
					require.NoError(t, d.Pause())
					frozen = append(frozen, d)
				}
			}
			thaw := func() {
				for _, d := range frozen {
					_ = d.Resume()
				}
			}
			t.Cleanup(thaw) // a failed test must not leave them frozen
			// Frozen alone, a replica would still get everything: the kernel
			// keeps receiving the stream into its socket. Cut the links too,
			// so the writes from now on stay on the primary.
			require.NoError(t, primary.Client(t).Do(t.Context(), "CLIENT", "KILL", "TYPE", "replica").Err())

			const path, n = "/slow?delay=1s", 20
			keys := make([]string, n)
			for i := range keys {
				keys[i] = newKey(t)
			}
			before := s.stats(t).Total
			retry := make(chan struct{})
			runs := make([]keyRun, n)
			var answered atomic.Int32
			var wg sync.WaitGroup
			deadline := time.Now().Add(60 * time.Second)
			for i, k := range keys {
				wg.Go(func() {
					r := s.send("POST", path, "", "Idempotency-Key", k)
					runs[i].first = r
					answered.Add(1)
				})
				wg.Go(func() { runs[i].retries = retryUntilOK(s, path, k, retry, deadline) })
			}
			// Every first request is either at the backend (granted) or
			// answered (refused).
			testenv.WaitFor(t, 30*time.Second, "every first request granted or refused", func() bool {
				return s.stats(t).Total-before+int(answered.Load()) >= n
			})
			granted := s.stats(t).Total - before
			start := time.Now()
			st.Kill(primary)
			thaw()
			close(retry)
			_, err = st.WaitFailover(t.Context(), primary)
			require.NoError(t, err)
			promoted := time.Since(start)
			require.NoError(t, st.Restart(t.Context(), primary))
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			testenv.Receive(t, done, 90*time.Second, "the clients")
			settled := time.Since(start)

			counts := s.stats(t).Keys
			twice, lost, statuses := 0, 0, map[string]int{}
			for i, k := range keys {
				r := &runs[i]
				r.final = s.do(t, "POST", path, "", "Idempotency-Key", k)
				var got reply // the first 200 the key's clients saw
				for _, x := range append([]reply{r.first}, r.retries...) {
					statuses[classify(x)]++
					if got.status == 0 && x.status == http.StatusOK {
						got = x
					}
				}
				if counts[k] > 1 {
					twice++
				}
				if !r.final.replayed() || string(r.final.body) != string(got.body) {
					lost++
				}
			}
			logFigures(t, "sentinel-replica-lag-min-replicas-"+replicas, "keys", n,
				"granted_while_replicas_frozen", granted, "executions", sumKeys(counts, keys), "ran_twice", twice,
				"lost_responses", lost, "statuses", fmt.Sprint(statuses), "promoted_after", promoted.Round(time.Millisecond),
				"all_settled_after", settled.Round(time.Millisecond),
				"unreplicated_acquires", s.metric(t, `idemproxy_unreplicated_writes_total{op="acquire"}`))
			if replicas != "0" {
				require.Zero(t, granted, "no lock is granted that no replica has")
				require.Zero(t, twice, "no key ran twice")
				require.Zero(t, lost, "every key replays the response its client got")
				for _, k := range keys {
					require.Equal(t, 1, counts[k], "key %s ran once", k)
				}
			} else {
				// The hazard the flag closes, shown rather than assumed: if
				// this ever fails, the scenario no longer loses locks, and
				// docs/reliability.md's table needs a new measurement.
				require.Positive(t, twice, "with 0 replicas acknowledged, locks the replicas never got die with the primary")
			}
		})
		if !ok {
			return
		}
	}
}
