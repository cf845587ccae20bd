package envoy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// rdsStack is a stack whose Envoy reads the shipped route table from a
// file (RDS over the filesystem) instead of the bootstrap, so a test can
// change a route's policy the way a control plane does: with no restart.
type rdsStack struct {
	*stack
	routesPath string
	routes     map[string]any // the RouteConfiguration, as last written
}

// startRDSStack starts Redis, the backend, idemproxy and an Envoy whose
// config is the shipped envoy.yaml with its route_config moved into an RDS
// file, plus a /shadow/ route in shadow mode.
func startRDSStack(t *testing.T, idemproxyArgs ...string) *rdsStack {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	s := startShared(t)
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), "127.0.0.1:0", "debug", idemproxyArgs...)
	c := testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: s.backendAddr, AuthToken: e2eToken}
	dir := t.TempDir()
	rs := &rdsStack{stack: s, routesPath: filepath.Join(dir, "routes.json")}
	var listener, admin int
	s.envoy, listener, admin = testenv.StartEnvoyOnFreePorts(t, envoyBin, func(l, a int) string {
		c.Listener, c.Admin = l, a
		return rs.envoyConfig(t, c)
	})
	s.envoyAdmin = fmt.Sprintf("127.0.0.1:%d", admin)
	s.url = fmt.Sprintf("http://127.0.0.1:%d", listener)
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(s.client.CloseIdleConnections)
	return rs
}

// envoyConfig writes the shipped envoy.yaml rendered with c, its routes
// moved into rs's RDS file (whose directory Envoy watches) with the
// /shadow/ route added, and returns the config's path.
func (rs *rdsStack) envoyConfig(t *testing.T, c testenv.EnvoyConfig) string {
	t.Helper()
	dir := filepath.Dir(rs.routesPath)
	rendered := testenv.WriteEnvoyConfig(t, "envoy.yaml", c)
	raw, err := os.ReadFile(rendered)
	require.NoError(t, err)
	var cfg map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &cfg)) // aliases resolved

	hcm := dig(t, cfg, "static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config").(map[string]any)
	routes := hcm["route_config"].(map[string]any)
	// The shadow route of docs/waiting-and-shadow.md's "Shadow mode" (not shipped: a route
	// that enforces nothing must be added on purpose), first in the table.
	vh := dig(t, routes, "virtual_hosts", 0).(map[string]any)
	vh["routes"] = append([]any{map[string]any{
		"match": map[string]any{"prefix": "/shadow/"},
		"route": map[string]any{"cluster": "backend", "prefix_rewrite": "/", "timeout": "60s"},
		"typed_per_filter_config": map[string]any{"envoy.filters.http.ext_proc": map[string]any{
			"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
			"overrides": map[string]any{"grpc_initial_metadata": []any{
				map[string]any{"key": "x-idemproxy-mode", "value": "shadow"}}},
		}},
	}}, vh["routes"].([]any)...)
	rs.routes = routes
	rs.writeRoutes(t)
	delete(hcm, "route_config")
	hcm["rds"] = map[string]any{
		"route_config_name": routes["name"],
		"config_source": map[string]any{
			"resource_api_version": "V3",
			"path_config_source": map[string]any{
				"path":              rs.routesPath,
				"watched_directory": map[string]any{"path": dir},
			},
		},
	}
	// Dynamic resources need a node identity.
	cfg["node"] = map[string]any{"id": "idemproxy-test", "cluster": "idemproxy-test"}
	out, err := json.Marshal(cfg)
	require.NoError(t, err)
	cfgPath := filepath.Join(t.TempDir(), "envoy-rds.json")
	require.NoError(t, os.WriteFile(cfgPath, out, 0o600))
	return cfgPath
}

// writeRoutes replaces the RDS file atomically (Envoy watches the
// directory for a move onto the path).
func (rs *rdsStack) writeRoutes(t *testing.T) {
	t.Helper()
	res := map[string]any{"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}
	for k, v := range rs.routes {
		res[k] = v
	}
	b, err := json.Marshal(map[string]any{"resources": []any{res}})
	require.NoError(t, err)
	tmp := rs.routesPath + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, 0o600))
	require.NoError(t, os.Rename(tmp, rs.routesPath))
}

// route returns the route whose prefix match is prefix.
func (rs *rdsStack) route(t *testing.T, prefix string) map[string]any {
	t.Helper()
	for _, r := range dig(t, rs.routes, "virtual_hosts", 0, "routes").([]any) {
		r := r.(map[string]any)
		if m := r["match"].(map[string]any); m["prefix"] == prefix && m["headers"] == nil {
			return r
		}
	}
	require.FailNow(t, "no route "+prefix)
	return nil
}

// dig walks maps (string steps) and lists (int steps).
func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			require.True(t, ok, "%v is not a map", p)
			v = m[p]
		case int:
			l, ok := v.([]any)
			require.True(t, ok, "[%d] is not a list", p)
			require.Greater(t, len(l), p)
			v = l[p]
		}
		require.NotNil(t, v, "%v", p)
	}
	return v
}

// TestShadow: on a /shadow/ route (docs/waiting-and-shadow.md's example), a duplicate storm, a retry of
// a completed key, a reused key with another payload and a Redis outage
// all reach the backend, and idemproxy counts what it would have done.
// Then the route is switched to enforcement through RDS, with Envoy still
// running: the same requests are refused or replayed from the records
// made in shadow.
func TestShadow(t *testing.T) {
	t.Parallel()
	s := startRDSStack(t, "--redis-timeout", "300ms", "--health-interval", "100ms")
	would := func(what string) float64 {
		return s.metric(t, `idemproxy_shadow_decisions_total{would="`+what+`"}`)
	}
	key := newKey(t)
	hdr := []string{"Idempotency-Key", key, "Content-Type", "application/json"}
	const body = `{"amount":5000}`

	// A duplicate storm while the first request runs.
	first := s.goDo("POST", "/shadow/slow?delay=1s", body, hdr...)
	time.Sleep(300 * time.Millisecond)
	var dups []<-chan result
	for range 10 {
		dups = append(dups, s.goDo("POST", "/shadow/slow?delay=1s", body, hdr...))
	}
	orig := await(t, first, 10*time.Second, "the first request")
	require.Equal(t, http.StatusOK, orig.status)
	for i, ch := range dups {
		r := await(t, ch, 10*time.Second, fmt.Sprintf("duplicate %d", i))
		require.Equal(t, http.StatusOK, r.status, "duplicate %d reached the backend: %s", i, r.body)
		require.False(t, r.replayed())
	}
	require.Equal(t, 11, s.executions(t, key), "every duplicate ran: shadow changes nothing")
	require.EqualValues(t, 10, would("in_progress_conflict"))
	require.EqualValues(t, 1, s.stats(t).Fences[key], "the granted request carried its fence")

	// A retry of the completed key, and a reuse with another payload.
	r := s.do(t, "POST", "/shadow/slow?delay=1s", body, hdr...)
	require.Equal(t, http.StatusOK, r.status)
	require.False(t, r.replayed(), "the backend answered, not the record")
	require.EqualValues(t, 1, would("replayed"))
	r = s.do(t, "POST", "/shadow/slow?delay=1s", `{"amount":9999}`, hdr...)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.EqualValues(t, 1, would("fingerprint_mismatch"))
	require.Equal(t, 13, s.executions(t, key))

	// Redis stops answering (paused, so it keeps its records): requests
	// still reach the backend.
	rc := s.redis.Client(t)
	require.NoError(t, rc.Do(t.Context(), "CLIENT", "PAUSE", "1500", "ALL").Err())
	outage := newKey(t)
	r = s.do(t, "POST", "/shadow/charge", body, "Idempotency-Key", outage)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, 1, s.executions(t, outage))
	require.Positive(t, would("store_error")+would("store_unsafe"), "counted as a store failure")
	// The test's own client is paused too: this returns once Redis serves
	// again.
	require.NoError(t, rc.Ping(t.Context()).Err())
	testenv.WaitFor(t, 10*time.Second, "idemproxy ready", func() bool { return readyz(s.adminURL) == http.StatusOK })

	// Enforce: the route's metadata changes through RDS; Envoy runs on.
	pid := s.envoy.Pid()
	updates := s.envoyStat(t, "http.ingress.rds.payments.update_success")
	shadowRoute := s.route(t, "/shadow/")
	delete(shadowRoute, "typed_per_filter_config")
	s.writeRoutes(t)
	testenv.WaitFor(t, 10*time.Second, "Envoy's route update", func() bool {
		return s.envoyStat(t, "http.ingress.rds.payments.update_success") > updates
	})
	require.Equal(t, pid, s.envoy.Pid())
	exited, _ := s.envoy.Exited()
	require.False(t, exited, "the same Envoy process")

	r = s.do(t, "POST", "/shadow/slow?delay=1s", body, hdr...)
	require.Equal(t, http.StatusOK, r.status)
	require.True(t, r.replayed(), "the record made in shadow is replayed")
	require.Equal(t, string(orig.body), string(r.body))
	r = s.do(t, "POST", "/shadow/slow?delay=1s", `{"amount":9999}`, hdr...)
	require.Equal(t, http.StatusUnprocessableEntity, r.status)
	require.Equal(t, "urn:idemproxy:problem:fingerprint-mismatch", r.problemType())
	fresh := newKey(t)
	running := s.goDo("POST", "/shadow/slow?delay=1s", body, "Idempotency-Key", fresh)
	time.Sleep(300 * time.Millisecond)
	r = s.do(t, "POST", "/shadow/slow?delay=1s", body, "Idempotency-Key", fresh)
	require.Equal(t, http.StatusConflict, r.status)
	require.Equal(t, "urn:idemproxy:problem:in-progress", r.problemType())
	await(t, running, 10*time.Second, "the enforced original")
	require.Equal(t, 13, s.executions(t, key), "nothing more ran for the shadow key")
	require.Equal(t, 1, s.executions(t, fresh))
	require.EqualValues(t, 10, would("in_progress_conflict"), "enforcement counts no shadow decisions")
}
