package envoy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// stack is the demo, started for one test: Redis, the backend, idemproxy
// and Envoy with the shipped envoy.yaml.
type stack struct {
	redis       *redistopo.Server
	backendProc *testenv.Process
	backendAddr string
	backend     string // base URL
	idemproxy   *testenv.Process
	adminURL    string // idemproxy admin
	envoy       *testenv.Process
	url         string // Envoy listener base URL
	envoyAdmin  string // Envoy admin host:port
	client      *http.Client
}

// stackConfig varies a stack from the shipped defaults.
type stackConfig struct {
	idemproxyArgs []string
	// envoyEdits change envoy.yaml: exact replacements, each matching once.
	envoyEdits [][2]string
	// redisArgs are added to redis-server's command line.
	redisArgs []string
	// idemproxyEnv is added to idemproxy's environment (NAME=value).
	idemproxyEnv []string
}

// keyedRouteTimeout is the envoy.yaml edit that sets the keyed routes'
// timeout (60 s as shipped; other routes have their own).
func keyedRouteTimeout(d string) [2]string {
	const line = "# The demo's /slow job takes 45 s; the default 15 s would cut it.\n                  timeout: "
	return [2]string{line + "60s", line + d}
}

// startStack starts everything; idemproxyArgs are added to idemproxy's flags.
func startStack(t *testing.T, idemproxyArgs ...string) *stack {
	t.Helper()
	return startStackWith(t, stackConfig{idemproxyArgs: idemproxyArgs})
}

func startStackWith(t *testing.T, c stackConfig) *stack {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	s := startSharedWith(t, c.redisArgs...)
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxyEnv(t, "idemproxy", c.idemproxyEnv, s.redis.URL(), "127.0.0.1:0", "debug", c.idemproxyArgs...)
	s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: s.backendAddr, Edits: c.envoyEdits}, 256)
	return s
}

// startEnvoy runs an Envoy in front of c.ExtProc and c.Backend, on free
// ports, and points the stack's client at it.
func (s *stack) startEnvoy(t *testing.T, bin string, c testenv.EnvoyConfig, conns int) {
	t.Helper()
	c.AuthToken = e2eToken
	var listener, admin int
	s.envoy, listener, admin = testenv.StartEnvoyOnFreePorts(t, bin, func(l, a int) string {
		c.Listener, c.Admin = l, a
		return testenv.WriteEnvoyConfig(t, "envoy.yaml", c)
	})
	s.envoyAdmin = fmt.Sprintf("127.0.0.1:%d", admin)
	s.url = fmt.Sprintf("http://127.0.0.1:%d", listener)
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	t.Cleanup(s.client.CloseIdleConnections)
}

// reply is what a client saw.
type reply struct {
	status  int
	header  http.Header
	body    []byte
	elapsed time.Duration
	done    time.Time // when the whole body had arrived
}

// problemType returns the problem+json type, or "" for other bodies.
func (r reply) problemType() string {
	if r.header.Get("Content-Type") != "application/problem+json" {
		return ""
	}
	var p struct{ Type string }
	if json.Unmarshal(r.body, &p) != nil {
		return ""
	}
	return p.Type
}

func (r reply) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

// do sends one request through Envoy. headers are name/value pairs; a
// "Host" pair sets the authority. Any wire error fails the test, so do
// runs on the test goroutine only; a goroutine uses tryDo.
func (s *stack) do(t testing.TB, method, path, body string, headers ...string) reply {
	t.Helper()
	r, err := s.tryDo(method, path, body, headers...)
	require.NoError(t, err)
	return r
}

// result is a reply, or the wire error that kept it from coming.
type result struct {
	reply
	err error
}

// goDo sends one request through Envoy on a goroutine of its own, which
// never touches the test (see do), and returns where its result arrives.
func (s *stack) goDo(method, path, body string, headers ...string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		r, err := s.tryDo(method, path, body, headers...)
		ch <- result{r, err}
	}()
	return ch
}

// await waits up to timeout for a goDo result and fails the test on a wire
// error, as do would have.
func await(t testing.TB, ch <-chan result, timeout time.Duration, what string) reply {
	t.Helper()
	res := testenv.Receive(t, ch, timeout, what)
	require.NoError(t, res.err, what)
	return res.reply
}

// backendStats is the mock backend's /stats.
type backendStats struct {
	Total       int              `json:"total"`
	Keys        map[string]int   `json:"keys"`
	StaleFences map[string]int   `json:"stale_fences"`
	Fences      map[string]int64 `json:"fences"`
	// FencedWithoutKey counts keyless requests that arrived with a fence.
	FencedWithoutKey int `json:"fenced_without_key"`
	// Attempts is Envoy's highest x-envoy-attempt-count seen per key.
	Attempts map[string]int `json:"attempts"`
}

func (s *stack) stats(t testing.TB) backendStats {
	t.Helper()
	resp, err := http.Get(s.backend + "/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st backendStats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

// executions is how often key reached the backend and ran.
func (s *stack) executions(t testing.TB, key string) int {
	t.Helper()
	return s.stats(t).Keys[key]
}

// metric returns the value of one idemproxy series, e.g.
// `idemproxy_requests_total{outcome="replayed"}`.
func (s *stack) metric(t testing.TB, series string) float64 {
	t.Helper()
	return testenv.Metric(t, s.adminURL+"/metrics", series)
}

// envoyStat reads one counter of this stack's Envoy.
func (s *stack) envoyStat(t testing.TB, name string) int {
	t.Helper()
	return testenv.EnvoyStat(t, s.envoyAdmin, name)
}

// startBackend runs the mock backend; its slow job takes 5 s by default.
func startBackend(t *testing.T, addr string) *testenv.Process {
	t.Helper()
	return startBin(t, "backend", "backend", "--addr", addr, "--slow-delay", "5s")
}
