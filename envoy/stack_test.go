package envoy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// stack is the demo, started for one test: Redis, the backend, idemproxy
// and Envoy with the shipped envoy.yaml.
type stack struct {
	redis       *redistopo.Server
	backendProc *process
	backendAddr string
	backend     string // base URL
	idemproxy   *process
	adminURL    string // idemproxy admin
	envoy       *process
	url         string // Envoy listener base URL
	envoyAdmin  int
	client      *http.Client
}

// stackConfig varies a stack from the shipped defaults.
type stackConfig struct {
	idemproxyArgs []string
	// envoyEdits change envoy.yaml: exact replacements, each matching once.
	envoyEdits [][2]string
	// redisArgs are added to redis-server's command line.
	redisArgs []string
}

// startStack starts everything; idemproxyArgs are added to idemproxy's flags.
func startStack(t *testing.T, idemproxyArgs ...string) *stack {
	t.Helper()
	return startStackWith(t, stackConfig{idemproxyArgs: idemproxyArgs})
}

func startStackWith(t *testing.T, c stackConfig) *stack {
	t.Helper()
	envoyBin := envoyBinary(t)
	s := &stack{redis: redistopo.Start(t, c.redisArgs...)}

	s.backendProc = startBackend(t, "127.0.0.1:0")
	s.backendAddr = s.backendProc.logAddr(t, "listening")
	s.backend = "http://" + s.backendAddr

	args := append([]string{
		"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-url", s.redis.URL(), "--log-level", "debug",
	}, c.idemproxyArgs...)
	s.idemproxy = startProcess(t, "idemproxy", filepath.Join(binDir, "idemproxy"), args...)
	grpcAddr := s.idemproxy.logAddr(t, "grpc listening")
	s.adminURL = "http://" + s.idemproxy.logAddr(t, "admin listening")
	waitFor(t, 10*time.Second, "idemproxy /readyz", func() bool {
		resp, err := http.Get(s.adminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	ports := envoyPorts{listener: freePort(t), admin: freePort(t), idemproxy: grpcAddr, backend: s.backendAddr,
		edits: c.envoyEdits}
	cfg := renderConfig(t, "envoy.yaml", ports)
	s.envoy = startEnvoy(t, envoyBin, cfg, ports.admin)
	s.envoyAdmin = ports.admin
	s.url = fmt.Sprintf("http://127.0.0.1:%d", ports.listener)
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	t.Cleanup(s.client.CloseIdleConnections)
	return s
}

// reply is what a client saw.
type reply struct {
	status  int
	header  http.Header
	body    []byte
	elapsed time.Duration
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
// "Host" pair sets the authority. Any wire error fails the test.
func (s *stack) do(t testing.TB, method, path, body string, headers ...string) reply {
	t.Helper()
	r, err := s.tryDo(method, path, body, headers...)
	require.NoError(t, err)
	return r
}

// backendStats is the mock backend's /stats.
type backendStats struct {
	Total       int              `json:"total"`
	Keys        map[string]int   `json:"keys"`
	StaleFences map[string]int   `json:"stale_fences"`
	Fences      map[string]int64 `json:"fences"`
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

// metric returns the value of one idemproxy metric line, e.g.
// `idemproxy_requests_total{outcome="replayed"}`.
func (s *stack) metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := http.Get(s.adminURL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			require.NoError(t, err)
			return f
		}
	}
	require.FailNow(t, "metric not found", series)
	return 0
}

// startBackend runs the mock backend; its slow job takes 5 s by default.
func startBackend(t *testing.T, addr string) *process {
	t.Helper()
	return startProcess(t, "backend", filepath.Join(binDir, "backend"), "--addr", addr, "--slow-delay", "5s")
}
