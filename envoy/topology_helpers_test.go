package envoy

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// The topology tests run idemproxy on a real Redis Cluster (3 primaries, 3
// replicas) or Sentinel setup (1 primary, 2 replicas, 3 sentinels), kill
// or reshard it under load, and count what the clients saw.

// startBackendOnly is a stack with the mock backend and nothing else: the
// topology tests bring their own Redis.
func startBackendOnly(t *testing.T) *stack {
	t.Helper()
	s := &stack{backendProc: startBackend(t, "127.0.0.1:0")}
	s.backendAddr = s.backendProc.LogAddr(t, "listening")
	s.backend = "http://" + s.backendAddr
	return s
}

// topoFrontend starts an idemproxy in mode on url, and an Envoy in front of
// it and of backend's backend.
func topoFrontend(t *testing.T, backend *stack, mode, url string, args ...string) *stack {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	s := &stack{backendProc: backend.backendProc, backendAddr: backend.backendAddr, backend: backend.backend}
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, "idemproxy-"+mode, url, "127.0.0.1:0", "info",
		append([]string{"--redis-mode", mode}, args...)...)
	s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: backend.backendAddr}, 512)
	return s
}

// clusterURL names one node and the others as addr= parameters.
func clusterURL(c *redistopo.Cluster) string {
	addrs := c.Addrs()
	return "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
}

// sentinelURL names the sentinels and the monitored primary.
func sentinelURL(st *redistopo.Sentinel) string {
	addrs := st.SentinelAddrs()
	return "redis://" + addrs[0] + "?master_name=" + redistopo.MasterName + "&addr=" + strings.Join(addrs[1:], "&addr=")
}

// failoverArgs are idemproxy's settings in the failover scenarios: a
// lease and a finalize timeout that outlast a failover of a few seconds
// on a loaded machine, and a Redis timeout well under Envoy's 2 s.
// minReplicas is "all" (the default) or a count.
func failoverArgs(minReplicas string) []string {
	return []string{"--redis-min-replicas", minReplicas, "--redis-replica-timeout", "250ms",
		"--redis-timeout", "600ms", "--lock-ttl", "20s", "--heartbeat", "2s", "--finalize-timeout", "20s",
		"--health-interval", "250ms"}
}

// locks counts the in-progress records on one Redis server: the requests
// in flight whose keys it holds.
func locks(t *testing.T, srv *redistopo.Server) int {
	t.Helper()
	c := srv.Client(t)
	n := 0
	iter := c.ScanType(t.Context(), 0, "idemproxy:{*}", 1000, "hash").Iterator()
	for iter.Next(t.Context()) {
		if st, err := c.HGet(t.Context(), iter.Val(), "st").Result(); err == nil && st == "p" {
			n++
		}
	}
	require.NoError(t, iter.Err())
	return n
}

// keyRun is what the clients of one key saw.
type keyRun struct {
	first   reply   // the slow request in flight during the failover
	retries []reply // the client's retries until it got a 200
	final   reply   // one more retry once everything settled
}

// retryUntilOK retries key every 250 ms from start on until a reply is a
// 200 (run or replayed) or a terminal refusal, or until deadline. It runs
// on its own goroutine: it never touches the test.
func retryUntilOK(s *stack, path, key string, start <-chan struct{}, deadline time.Time) []reply {
	<-start
	var rs []reply
	for time.Now().Before(deadline) {
		r := s.send("POST", path, "", "Idempotency-Key", key)
		rs = append(rs, r)
		switch {
		case r.status == http.StatusOK, r.problemType() == problem+"outcome-unknown",
			r.problemType() == problem+"response-not-stored":
			return rs
		}
		time.Sleep(250 * time.Millisecond) // a client's pacing
	}
	return rs
}

// inFlight sends one slow request per key through s, with a retrying
// client per key that starts when retry is closed; it returns once every
// first request is executing at the backend, and a function that waits for
// every client.
func inFlight(t *testing.T, s *stack, keys []string, path string, retry <-chan struct{}) func() []keyRun {
	t.Helper()
	before := s.stats(t).Total
	runs := make([]keyRun, len(keys))
	var wg sync.WaitGroup
	deadline := time.Now().Add(90 * time.Second)
	for i, k := range keys {
		wg.Go(func() {
			r := s.send("POST", path, "", "Idempotency-Key", k)
			runs[i].first = r
		})
		wg.Go(func() { runs[i].retries = retryUntilOK(s, path, k, retry, deadline) })
	}
	testenv.WaitFor(t, 30*time.Second, "every slow request to reach the backend", func() bool {
		return s.stats(t).Total-before >= len(keys)
	})
	return func() []keyRun {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		testenv.Receive(t, done, 120*time.Second, "the clients")
		return runs
	}
}

// failoverFigures checks and counts a failover scenario's runs: how many
// keys ran more than once, and how many lost their response (the final
// retry is not a replay of the first response, byte for byte).
type failoverFigures struct {
	twice, lost, firstOK int
	statuses             map[string]int
	// lostFinal is what the final request of each lost key got.
	lostFinal map[string]int
}

func countFailover(t *testing.T, s *stack, path string, keys []string, runs []keyRun) failoverFigures {
	t.Helper()
	st := s.stats(t)
	f := failoverFigures{statuses: map[string]int{}, lostFinal: map[string]int{}}
	for i, k := range keys {
		r := &runs[i]
		r.final = settledAnswer(t, s, path, k)
		for _, x := range append([]reply{r.first}, r.retries...) {
			f.statuses[classify(x)]++
		}
		if st.Keys[k] > 1 {
			f.twice++
		}
		if r.first.status == http.StatusOK {
			f.firstOK++
		}
		if r.first.status != http.StatusOK || !r.final.replayed() || string(r.final.body) != string(r.first.body) {
			f.lost++
			f.lostFinal[classify(r.final)]++
		}
	}
	return f
}

// settledAnswer is what a retry of key gets once the topology settled: a
// 503 store-unavailable says nothing ran and to come back (right after a
// killed primary returns, Redis Cluster nodes answer CLUSTERDOWN for a
// moment, seen here in about 1 run in 8 under load), so it retries those,
// as every client in these tests does, for up to 20 s.
func settledAnswer(t *testing.T, s *stack, path, key string) reply {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := s.do(t, "POST", path, "", "Idempotency-Key", key)
		if classify(r) != classUnavailable || time.Now().After(deadline) {
			return r
		}
		time.Sleep(250 * time.Millisecond) // a client's pacing
	}
}

// chargeAndReplay charges a new key through s and retries it: the charge
// runs, the retry replays it byte for byte, and the backend ran it once.
func chargeAndReplay(t *testing.T, s *stack) {
	t.Helper()
	k := newKey(t)
	first := s.do(t, "POST", "/charge", "", "Idempotency-Key", k)
	again := s.do(t, "POST", "/charge", "", "Idempotency-Key", k)
	require.Equal(t, classExecuted, classify(first))
	require.Equal(t, classReplayed, classify(again))
	require.Equal(t, string(first.body), string(again.body))
	require.Equal(t, 1, s.executions(t, k))
}
