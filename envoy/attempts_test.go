package envoy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Envoy's router retries inside one downstream request, behind the one
// ext_proc stream idemproxy sees. These tests put Istio's old default retry
// policy on a keyed route of their own (the shipped routes carry no unsafe
// policy) and check that a double run it causes is detected.

// istioRoute is the envoy.yaml edit that adds, before the shipped routes,
// /istio/ with the retry policy Istio applied to every route by default
// before 1.24 (istio/istio#50506): it retries a 503 that the backend may
// have answered after running the request.
func istioRoute(extra string) [2]string {
	const anchor = "              - match: { prefix: /strict/ }\n"
	return [2]string{anchor, `              - match: { prefix: /istio/ }
                route:
                  cluster: backend
                  prefix_rewrite: /
                  timeout: 30s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    retriable_status_codes: [503]
                    num_retries: 2
` + extra + anchor}
}

const retryLogLine = "Envoy retried a keyed request upstream, so it may have run more than once"

// TestEndToEnd_UnsafeRetryDetected: the backend runs the charge and answers
// 503; Envoy retries it, and it runs again. idemproxy cannot prevent that
// (one stream, one lock) but detects it: counted, logged once per route,
// and marked on the stored record. A request Envoy did not retry is not.
func TestEndToEnd_UnsafeRetryDetected(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--admin-token", adminToken},
		envoyEdits:    [][2]string{istioRoute("")},
	})
	const retried = `idemproxy_upstream_retries_total{kind="may_have_run"}`
	host := s.url[len("http://"):]

	// Not retried: nothing detected, nothing marked.
	calm := newKey(t)
	r := s.do(t, "POST", "/istio/charge", "", "Idempotency-Key", calm)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, "1", r.header.Get("X-Envoy-Attempt-Count"), "the shipped virtual host asks for the attempt count")
	require.Zero(t, s.metric(t, retried))
	code, info := s.adminKey(t, "GET", host, calm, adminToken)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "completed", info["state"])
	require.NotContains(t, info, "upstream_attempts")

	// The first attempt runs and answers 503; Envoy retries: a double run.
	key := newKey(t)
	r = s.do(t, "POST", "/istio/busy?times=1&code=503&delay=1ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, "2", r.header.Get("X-Envoy-Attempt-Count"))
	st := s.stats(t)
	require.Equal(t, 2, st.Keys[key], "the retry policy ran the charge twice")
	require.Equal(t, 2, st.Attempts[key], "the backend saw the attempt count next to the fence")
	require.NotZero(t, st.Fences[key], "both attempts carried the same fence")

	require.Equal(t, 1.0, s.metric(t, retried))
	require.Equal(t, 1, strings.Count(s.idemproxy.Output(), retryLogLine))
	require.Contains(t, s.idemproxy.Output(), `"route":"`+strings.ToLower(host)+`/istio/"`)
	code, info = s.adminKey(t, "GET", host, key, adminToken)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "completed", info["state"])
	require.EqualValues(t, 2, info["upstream_attempts"], "inspect shows the mark")

	// The client's own retry is a replay: no third run.
	again := s.do(t, "POST", "/istio/busy?times=1&code=503&delay=1ms", "", "Idempotency-Key", key)
	require.True(t, again.replayed())
	require.Equal(t, 2, s.executions(t, key))

	// Another double run on the same route: counted, not logged again.
	other := newKey(t)
	r = s.do(t, "POST", "/istio/busy?times=1&code=503&delay=1ms", "", "Idempotency-Key", other)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, 2.0, s.metric(t, retried))
	require.Equal(t, 1, strings.Count(s.idemproxy.Output(), retryLogLine), "logged once per route")
	t.Logf("unsafe retry: executions %d and %d, idemproxy_upstream_retries_total{kind=may_have_run} %v, inspect upstream_attempts %v",
		s.executions(t, key), s.executions(t, other), s.metric(t, retried), info["upstream_attempts"])
}

// TestEndToEnd_UnsafeRetryHoldsKey: every attempt ran and answered 503 (a
// status idemproxy is told not to store). Giving the key back would let the
// client's retry run a fourth time; it is held as an unknown outcome.
func TestEndToEnd_UnsafeRetryHoldsKey(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--no-store-statuses", "503"},
		envoyEdits:    [][2]string{istioRoute("")},
	})
	key := newKey(t)
	r := s.do(t, "POST", "/istio/busy?times=5&code=503&delay=1ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
	require.Equal(t, "3", r.header.Get("X-Envoy-Attempt-Count"))
	require.Equal(t, 3, s.executions(t, key))
	require.Equal(t, 1.0, s.metric(t, `idemproxy_upstream_retries_total{kind="may_have_run"}`))
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))

	again := s.do(t, "POST", "/istio/busy?times=5&code=503&delay=1ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
	require.Equal(t, problem+"outcome-unknown", again.problemType())
	require.Equal(t, 3, s.executions(t, key), "no fourth run")
}

// TestEndToEnd_DeclaredNeverSentRetries: a route that declares its retries
// only re-send never-sent requests is taken at its word: the same double
// run is counted as declared_never_sent, not alerted, and not held. This is
// what a wrong declaration costs; the docs say so.
func TestEndToEnd_DeclaredNeverSentRetries(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--no-store-statuses", "503"},
		envoyEdits: [][2]string{istioRoute(`                typed_per_filter_config:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides:
                      grpc_initial_metadata:
                      - { key: x-idemproxy-retries, value: never-sent }
`)},
	})
	key := newKey(t)
	r := s.do(t, "POST", "/istio/busy?times=5&code=503&delay=1ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
	require.Equal(t, 3, s.executions(t, key))
	require.Zero(t, s.metric(t, `idemproxy_upstream_retries_total{kind="may_have_run"}`))
	require.Equal(t, 1.0, s.metric(t, `idemproxy_upstream_retries_total{kind="declared_never_sent"}`))
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="released_status"}`))
	require.NotContains(t, s.idemproxy.Output(), retryLogLine)
}
