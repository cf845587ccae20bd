package envoy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// idemproxy checks the Envoy config it is given, from the streams it sees
// (processor/envoycheck.go). These tests run envoy.yaml with one piece
// removed, as a user's own config might lack it.

// withoutCodeDetails is the envoy.yaml edit that removes the ext_proc
// filter's response_attributes: Envoy then no longer says whether a
// response came from the upstream or is its own local reply.
var withoutCodeDetails = [2]string{"              response_attributes: [\"response.code_details\"]\n", ""}

// configProblem is the gauge series of one config problem.
func configProblem(kind string) string {
	return `idemproxy_envoy_config_problems{problem="` + kind + `"}`
}

// TestEndToEnd_ConfigWithoutCodeDetails: without response.code_details,
// Envoy's own 504 after a route timeout arrives at idemproxy like an
// upstream response (Envoy 1.37 and later pass local replies through
// ext_proc). Before idemproxy told the two apart, that 504 was stored and
// every retry got it back as a replay, marked Idempotent-Replayed, for the
// whole retention. Now the 504 without Envoy's x-envoy-upstream-service-time
// is taken for Envoy's local reply, so the key is an unknown outcome (409),
// while a real upstream 503 is still stored. The missing attribute is
// logged once and shown by idemproxy_envoy_config_problems.
func TestEndToEnd_ConfigWithoutCodeDetails(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		envoyEdits: [][2]string{withoutCodeDetails, keyedRouteTimeout("1s")},
	})
	require.Zero(t, s.metric(t, configProblem("no_code_details")), "nothing seen yet")

	key := newKey(t)
	r := s.do(t, "POST", "/slow?delay=1500ms", `{"amount":700}`, "Idempotency-Key", key)
	require.Equal(t, http.StatusGatewayTimeout, r.status, "%s", r.body)
	require.Equal(t, "upstream request timeout", string(r.body), "Envoy's own reply")

	again := s.do(t, "POST", "/slow?delay=1500ms", `{"amount":700}`, "Idempotency-Key", key)
	require.False(t, again.replayed(), "Envoy's 504 must not be replayed as the upstream's answer: %d %s", again.status, again.body)
	require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
	require.Equal(t, problem+"outcome-unknown", again.problemType())
	require.Equal(t, 1, s.executions(t, key), "the timed-out request never runs again")
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))

	// A real upstream 503 carries x-envoy-upstream-service-time: stored and
	// replayed as before.
	key503 := newKey(t)
	first := s.do(t, "POST", "/status?code=503&body=declined&type=text/plain", "", "Idempotency-Key", key503)
	require.Equal(t, http.StatusServiceUnavailable, first.status)
	replay := s.do(t, "POST", "/status?code=503&body=declined&type=text/plain", "", "Idempotency-Key", key503)
	require.Equal(t, http.StatusServiceUnavailable, replay.status)
	require.True(t, replay.replayed(), "the upstream's own 503 is still stored")
	require.Equal(t, "declined", string(replay.body))
	require.Equal(t, 1, s.executions(t, key503))

	require.Equal(t, 1.0, s.metric(t, configProblem("no_code_details")))
	// Three streams lacked the attribute; the error is logged once.
	const logged = "Envoy does not send the response.code_details attribute"
	testenv.WaitFor(t, 5*time.Second, "the config problem's log line", func() bool {
		return strings.Contains(s.idemproxy.Output(), logged)
	})
	require.Equal(t, 1, strings.Count(s.idemproxy.Output(), logged), "one log line per problem, not per request")
	t.Logf("without response.code_details: timeout %d %q, retry %d %s; upstream 503 replayed=%v; gauge %v",
		r.status, r.body, again.status, again.problemType(), replay.replayed(), s.metric(t, configProblem("no_code_details")))
}

// TestEndToEnd_ConfigShippedHasNoProblems: with the shipped envoy.yaml the
// checker finds nothing, through an ordinary charge, a replay and a route
// timeout.
func TestEndToEnd_ConfigShippedHasNoProblems(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{keyedRouteTimeout("1s")}})
	key := newKey(t)
	require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", `{"amount":1}`, "Idempotency-Key", key).status)
	require.True(t, s.do(t, "POST", "/charge", `{"amount":1}`, "Idempotency-Key", key).replayed())
	slow := newKey(t)
	require.Equal(t, http.StatusGatewayTimeout, s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", slow).status)
	require.Equal(t, problem+"outcome-unknown", s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", slow).problemType())
	for _, p := range []string{"no_code_details", "request_body_not_buffered", "response_body_not_streamed", "no_response_headers"} {
		require.Zero(t, s.metric(t, configProblem(p)), p)
	}
	require.NotContains(t, s.idemproxy.Output(), "Envoy config problem")
}

// TestEndToEnd_ConfigWithoutResponseHeaders: a filter that sends idemproxy
// neither the response headers nor the body (response_header_mode SKIP,
// response_body_mode NONE) leaves every keyed request an unknown outcome.
// protocol_config shows the body mode on the first stream; the missing
// headers show after a run of keyed requests without them.
func TestEndToEnd_ConfigWithoutResponseHeaders(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{
		{"response_header_mode: SEND", "response_header_mode: SKIP"},
		{"response_body_mode: STREAMED", "response_body_mode: NONE"},
	}})
	var keys []string
	for i := range 5 {
		key := newKey(t)
		keys = append(keys, key)
		r := s.do(t, "POST", "/charge", `{"amount":1}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, 1.0, s.metric(t, configProblem("response_body_not_streamed")), "from the first stream on")
		if i < 4 {
			require.Zero(t, s.metric(t, configProblem("no_response_headers")), "after %d requests", i+1)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "the run of requests without response headers", func() bool {
		return s.metric(t, configProblem("no_response_headers")) == 1
	})
	again := s.do(t, "POST", "/charge", `{"amount":1}`, "Idempotency-Key", keys[0])
	require.Equal(t, problem+"outcome-unknown", again.problemType(), "%d %s", again.status, again.body)
	require.Equal(t, 1, s.executions(t, keys[0]))
	out := s.idemproxy.Output()
	require.Equal(t, 1, strings.Count(out, `"problem":"no_response_headers"`), out)
	require.Equal(t, 1, strings.Count(out, `"problem":"response_body_not_streamed"`), out)
	require.Zero(t, s.metric(t, configProblem("no_code_details")), "no response headers, nothing to judge")
}
