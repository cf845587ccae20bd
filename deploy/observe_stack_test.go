package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
	p := startProcs(t, []string{"--slow-delay", "3s"},
		[]string{"--health-interval", "200ms", "--held-keys-interval", "1s", "--finalize-timeout", "2s"})
	s := &observedStack{redis: p.redis, idemproxy: p.idemproxy, adminAddr: p.admin, client: &http.Client{Timeout: 20 * time.Second}}
	backendAddr, grpcAddr := p.backendHTTP, p.extProc
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
