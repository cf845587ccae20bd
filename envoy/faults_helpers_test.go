package envoy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// faultConfig varies the stack of the fault and load tests.
type faultConfig struct {
	// replicas is how many idemproxy processes share Envoy's one idemproxy
	// cluster (round robin, Envoy's default); 0 means 1.
	replicas int
	// redisVia, if set, is given Redis's address and returns the address
	// idemproxy must dial instead, e.g. a Toxiproxy proxy in front of Redis.
	redisVia      func(redisAddr string) string
	idemproxyArgs []string
	// envoyEdits change envoy.yaml: exact replacements, each matching once.
	envoyEdits [][2]string
}

// replica is one idemproxy process of a faultStack.
type replica struct {
	proc     *testenv.Process
	grpcAddr string
	adminURL string
}

// faultStack is a stack whose idemproxy may be several replicas and may
// reach Redis through a proxy. Its embedded stack talks to replica 0.
type faultStack struct {
	*stack
	replicas []replica
}

// startFaultStack starts Redis, the backend, the idemproxy replicas and
// Envoy. It is startStackWith's sibling rather than an option of it because
// Redis must run, and the test's proxy exist, before idemproxy starts.
func startFaultStack(t *testing.T, c faultConfig) *faultStack {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	s := startShared(t)
	redisAddr := s.redis.Addr
	if c.redisVia != nil {
		redisAddr = c.redisVia(redisAddr)
	}
	fs := &faultStack{stack: s}
	for i := range max(c.replicas, 1) {
		fs.replicas = append(fs.replicas, startReplica(t, fmt.Sprintf("idemproxy-%d", i+1), "redis://"+redisAddr+"/0", c.idemproxyArgs))
	}
	s.idemproxy, s.adminURL = fs.replicas[0].proc, fs.replicas[0].adminURL

	edits := c.envoyEdits
	if len(fs.replicas) > 1 {
		edits = append(edits, replicaEndpoints(t, fs.replicas))
	}
	s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: fs.replicas[0].grpcAddr, Backend: s.backendAddr, Edits: edits}, 256)
	return fs
}

// startReplica runs one idemproxy and waits until it is ready. It logs at
// info, not debug: a storm's thousands of streams would bury the output
// that a failing test prints.
func startReplica(t *testing.T, name, redisURL string, extra []string) replica {
	t.Helper()
	var r replica
	r.proc, r.grpcAddr, r.adminURL = runIdemproxy(t, name, redisURL, "127.0.0.1:0", "info", extra...)
	return r
}

// replicaEndpoints is the envoy.yaml edit that puts every replica after the
// first into the idemproxy cluster's endpoint list, next to the first (whose
// port renderConfig has already written).
func replicaEndpoints(t *testing.T, rs []replica) [2]string {
	t.Helper()
	line := func(addr string) string {
		_, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		return "socket_address: { address: 127.0.0.1, port_value: " + port + " }"
	}
	first := line(rs[0].grpcAddr)
	more := first
	for _, r := range rs[1:] {
		more += "\n        - endpoint:\n            address:\n              " + line(r.grpcAddr)
	}
	return [2]string{first, more}
}

// readyz returns the status of an admin /readyz, or 0 if it did not answer.
func readyz(adminURL string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(adminURL + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// grpcHealth asks idemproxy's gRPC health service about the ext_proc
// service, as a gRPC health check in Envoy or Kubernetes would.
func grpcHealth(t *testing.T, addr string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: extProcServiceName})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return resp.GetStatus()
}

// extProcServiceName is the gRPC health service name idemproxy reports.
const extProcServiceName = "envoy.service.ext_proc.v3.ExternalProcessor"

const serving = healthpb.HealthCheckResponse_SERVING

// metricFamily sums every series of one metric family on an admin /metrics,
// e.g. all outcomes of idemproxy_requests_total.
func metricFamily(t *testing.T, adminURL, family string) float64 {
	t.Helper()
	return testenv.MetricSum(t, adminURL+"/metrics", family)
}

// newStormClient keeps up to conns connections to Envoy, one per request in
// flight, so a storm's requests are concurrent all the way to Envoy. It
// opens them first, with keyless requests that idemproxy never sees: the
// storm then measures idemproxy, not 1,000 TCP handshakes of a client built
// with -race.
func newStormClient(t *testing.T, s *faultStack, conns int) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: time.Minute}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	var failed atomic.Int32
	storm(conns, func(int) reply {
		resp, err := c.Get(s.url + "/healthz")
		if err != nil {
			failed.Add(1)
			return reply{}
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			failed.Add(1)
		}
		return reply{}
	})
	require.Zero(t, failed.Load(), "warming up the connections")
	return c
}

// fire sends one keyed POST and never fails the test: it runs on storm
// goroutines, where require may not stop the test. A transport error is
// status -1 with the error as body.
func fire(c *http.Client, url, key string) reply {
	start := time.Now()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		return reply{status: -1, body: []byte(err.Error())}
	}
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(req)
	if err != nil {
		return reply{status: -1, body: []byte(err.Error()), elapsed: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{status: -1, body: []byte(err.Error()), elapsed: time.Since(start)}
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b, elapsed: time.Since(start)}
}

// storm runs send(0..n-1) on n goroutines released together, and returns
// the replies and the wall time from release to the last reply.
func storm(n int, send func(i int) reply) ([]reply, time.Duration) {
	replies := make([]reply, n)
	var ready, wg sync.WaitGroup
	ready.Add(n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			ready.Done()
			<-start
			replies[i] = send(i)
		})
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	wg.Wait()
	return replies, time.Since(t0)
}

// Reply classes of the fault tests.
const (
	classExecuted    = "executed"
	classReplayed    = "replayed"
	classInProgress  = "409-in-progress"
	classUnavailable = "503-store-unavailable"
	classStoreReset  = "503-store-reset"
)

// classify names what a reply was; anything unexpected keeps its status,
// problem type or body so the failure message shows it.
func classify(r reply) string {
	switch {
	case r.status == http.StatusOK && r.replayed():
		return classReplayed
	case r.status == http.StatusOK:
		return classExecuted
	case r.status == http.StatusConflict && r.problemType() == problem+"in-progress":
		return classInProgress
	case r.status == http.StatusServiceUnavailable && r.problemType() == problem+"store-unavailable" &&
		r.header.Get("Retry-After") != "":
		return classUnavailable
	case r.status == http.StatusServiceUnavailable && r.problemType() == problem+"store-reset" &&
		r.header.Get("Retry-After") == "":
		return classStoreReset
	}
	b := string(r.body)
	if len(b) > 120 {
		b = b[:120]
	}
	return fmt.Sprintf("unexpected %d %s", r.status, b)
}

// tally counts the replies by class.
func tally(rs []reply) map[string]int {
	counts := map[string]int{}
	for _, r := range rs {
		counts[classify(r)]++
	}
	return counts
}

// latencies summarises the client-side latencies of rs.
func latencies(rs []reply) string {
	if len(rs) == 0 {
		return "p50=- p99=- max=-"
	}
	ds := make([]time.Duration, len(rs))
	for i, r := range rs {
		ds[i] = r.elapsed
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[int(q*float64(len(ds)-1))].Round(time.Millisecond) }
	return fmt.Sprintf("p50=%v p99=%v max=%v", at(0.5), at(0.99), ds[len(ds)-1].Round(time.Millisecond))
}

// logFigures writes the one line per scenario that docs/reliability.md quotes:
// "figures: scenario=<name> key=value ...", in the order given.
func logFigures(t *testing.T, scenario string, kv ...any) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "figures: scenario=%s", scenario)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %v=%v", kv[i], kv[i+1])
	}
	t.Log(b.String())
}
