package deploy

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

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// observedStack is the demo (Redis, backend, idemproxy, Envoy with the
// shipped envoy.yaml) started for the monitoring tests.
type observedStack struct {
	redis     *redistopo.Server
	idemproxy *testenv.Process
	adminAddr string // idemproxy's admin host:port, what Prometheus scrapes
	url       string // Envoy's listener
	client    *http.Client
}

func startObservedStack(t *testing.T) *observedStack {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	bins := t.TempDir()
	require.NoError(t, testenv.GoBuild(mustAbs(t, root), bins, false, "./cmd/idemproxy", "./cmd/backend"))
	s := &observedStack{redis: redistopo.Start(t), client: &http.Client{Timeout: 20 * time.Second}}
	backend := testenv.Start(t, testenv.Command{Name: "backend", Path: filepath.Join(bins, "backend"),
		Args: []string{"--addr", "127.0.0.1:0", "--slow-delay", "3s"}})
	backendAddr := backend.LogAddr(t, "listening")
	s.idemproxy = testenv.Start(t, testenv.Command{Name: "idemproxy", Path: filepath.Join(bins, "idemproxy"), Args: []string{
		"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--redis-url", s.redis.URL(),
		"--health-interval", "200ms", "--held-keys-interval", "1s", "--finalize-timeout", "2s",
	}})
	grpcAddr := s.idemproxy.LogAddr(t, "grpc listening")
	s.adminAddr = s.idemproxy.LogAddr(t, "admin listening")
	s.idemproxy.Ready(t, 10*time.Second, testenv.HTTPOK(http.DefaultClient, "http://"+s.adminAddr+"/readyz"))
	_, listener, _ := testenv.StartEnvoyOnFreePorts(t, envoyBin, func(l, a int) string {
		c := testenv.EnvoyConfig{Listener: l, Admin: a, Backend: backendAddr, ExtProc: grpcAddr}
		return testenv.WriteEnvoyConfig(t, repoPath("envoy", "envoy.yaml"), c)
	})
	s.url = fmt.Sprintf("http://127.0.0.1:%d", listener)
	t.Cleanup(s.client.CloseIdleConnections)
	return s
}

// post sends one request through Envoy and returns its status (0 for a
// wire error); safe on any goroutine.
func (s *observedStack) post(path, body, key string) int {
	req, err := http.NewRequest(http.MethodPost, s.url+path, strings.NewReader(body))
	if err != nil {
		return 0
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// metric reads one idemproxy series (absent reads as -1).
func (s *observedStack) metric(t *testing.T, series string) float64 {
	t.Helper()
	m, err := testenv.ScrapeMetrics(t.Context(), http.DefaultClient, "http://"+s.adminAddr+"/metrics")
	require.NoError(t, err)
	v, ok := m.Value(series)
	if !ok {
		return -1
	}
	return v
}

// promResult is an instant query's answer.
type promResult struct {
	Status string `json:"status"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

// query runs expr in prom and fails the test unless Prometheus parsed and
// ran it.
func query(t *testing.T, prom *testenv.Prometheus, expr string) promResult {
	t.Helper()
	raw, err := prom.Query(t.Context(), expr)
	require.NoError(t, err, "query %s", expr)
	var r promResult
	require.NoError(t, json.Unmarshal([]byte(raw), &r))
	require.Equal(t, "success", r.Status, expr)
	return r
}

// prometheusConfig scrapes idemproxy every second and evaluates the rules
// every second.
func prometheusConfig(target string) string {
	return `global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [rules.yaml]
scrape_configs:
- job_name: idemproxy
  static_configs:
  - targets: ["` + target + `"]
`
}
