package envoy

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Envoy's router retries inside one request, after ext_proc: idemproxy sees
// one stream while the backend may see several. The keyed routes of
// envoy.yaml retry only what never reached the backend
// (reset-before-request, connect-failure, refused-stream). These tests run
// that policy, and Istio's old default, through real Envoy.

// keyedRetryAnchor starts the retry policy of envoy.yaml's keyed routes
// (one anchor, aliased by every keyed route; the replay route has its own
// copy of the same conditions).
const keyedRetryAnchor = "retry_policy: &safe_retries\n                    "

// shippedRetryOn is the retry_on line of that anchor.
const shippedRetryOn = keyedRetryAnchor + "retry_on: reset-before-request,connect-failure,refused-stream\n"

// istioOldDefaultRetries is the edit that gives the keyed routes Istio's
// default retry policy before EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY (what
// istio/istio#50506 ran into): 2 retries on connect-failure, refused-stream,
// unavailable, cancelled and 503. num_retries stays envoy.yaml's 2.
var istioOldDefaultRetries = [2]string{shippedRetryOn,
	keyedRetryAnchor + "retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\n" +
		"                    retriable_status_codes: [503]\n"}

// refusingAddr returns a loopback address that refuses every connection
// while the test runs: a TCP socket bound but never listening holds the
// port, so nothing else takes it, and the kernel resets every connection
// attempt.
func refusingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// deadEndpointFirst is the edit that puts an endpoint that refuses
// connections before the backend in the backend cluster (round robin: a
// run of requests tries both first).
func deadEndpointFirst(dead string) [2]string {
	const head = "      cluster_name: backend\n      endpoints:\n      - lb_endpoints:\n"
	_, port, _ := strings.Cut(dead, ":")
	return [2]string{head, head +
		"        - endpoint:\n" +
		"            address:\n" +
		"              socket_address: { address: 127.0.0.1, port_value: " + port + " }\n"}
}

// TestRetry_ConnectionRefusedRunsOnce: one of the backend's two endpoints
// refuses connections. Every keyed request the router first sends there is
// retried on the live one: the client gets the real 200, the charge runs
// exactly once, and idemproxy stores it (a retry with the key replays).
func TestRetry_ConnectionRefusedRunsOnce(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{deadEndpointFirst(refusingAddr(t))}})

	const n = 4 // round robin over two endpoints: at least one starts on the dead one
	keys := make([]string, n)
	for i := range keys {
		keys[i] = newKey(t)
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", keys[i])
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.False(t, r.replayed())
	}
	refused := s.envoyStat(t, "cluster.backend.upstream_cx_connect_fail")
	retried := s.envoyStat(t, "cluster.backend.upstream_rq_retry")
	require.Positive(t, refused, "some request tried the dead endpoint")
	require.Equal(t, refused, retried, "each refused connection was retried")
	require.Equal(t, retried, s.envoyStat(t, "cluster.backend.upstream_rq_retry_success"))
	for _, k := range keys {
		require.Equal(t, 1, s.executions(t, k), "key %s", k)
	}
	require.Equal(t, float64(n), s.metric(t, `idemproxy_responses_total{result="stored"}`))
	require.Zero(t, s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`))

	again := s.do(t, "POST", "/charge", "", "Idempotency-Key", keys[0])
	require.Equal(t, http.StatusOK, again.status)
	require.True(t, again.replayed())
	require.Equal(t, 1, s.executions(t, keys[0]))
	t.Logf("%d keyed requests, %d refused connections retried: all 200, each ran once", n, retried)
}

// answer503 sends a keyed request whose backend runs it, then answers 503,
// and a retry of it with the same key. It returns the client's two replies,
// how often the backend ran the key, and how often Envoy's router retried.
func answer503(t *testing.T, s *stack) (first, again reply, executions, retried int) {
	t.Helper()
	key := newKey(t)
	first = s.do(t, "POST", "/status?code=503", "", "Idempotency-Key", key)
	again = s.do(t, "POST", "/status?code=503", "", "Idempotency-Key", key)
	return first, again, s.executions(t, key), s.envoyStat(t, "cluster.backend.upstream_rq_retry")
}

// TestRetry_503AfterExecutingIsNotRetried: the backend ran the request and
// answered 503. The shipped policy does not retry it: the backend ran it
// once, the client gets that 503, and idemproxy stores it like any other
// status outside --no-store-statuses (the retry is a replay).
func TestRetry_503AfterExecutingIsNotRetried(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	first, again, executions, retried := answer503(t, s)
	require.Equal(t, http.StatusServiceUnavailable, first.status)
	require.Contains(t, string(first.body), `"status":503`, "the backend's own 503")
	require.False(t, first.replayed())
	require.Zero(t, retried)
	require.Equal(t, 1, executions)
	require.Equal(t, http.StatusServiceUnavailable, again.status)
	require.True(t, again.replayed())
	require.Equal(t, first.body, again.body)
	t.Logf("503 after executing, shipped retry policy: Envoy retries %d, executions %d", retried, executions)
}

// TestRetry_IstioOldDefaultRunsTwice is the fault test of the one above:
// with Istio's old default retry policy on the keyed routes, the router
// re-sends the executed request behind idemproxy's back. The backend runs
// it three times (two retries) while idemproxy saw, and stored, one
// request: the double payout of istio/istio#50506.
func TestRetry_IstioOldDefaultRunsTwice(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{istioOldDefaultRetries}})
	first, again, executions, retried := answer503(t, s)
	require.Equal(t, http.StatusServiceUnavailable, first.status)
	require.Equal(t, 2, retried)
	require.Equal(t, 3, executions, "the unsafe policy runs the request again: the check above would catch it")
	require.Equal(t, 1.0, s.metric(t, `idemproxy_responses_total{result="stored"}`), "idemproxy saw one request")
	require.True(t, again.replayed())
	t.Logf("503 after executing, Istio's old default: Envoy retries %d, executions %d", retried, executions)
}

// hangup sends a keyed request that the backend runs and then answers with
// a connection reset, no response at all. It returns the client's reply,
// how often the backend ran the key, and how often Envoy's router retried.
func hangup(t *testing.T, s *stack) (key string, r reply, executions, retried int) {
	t.Helper()
	key = newKey(t)
	r = s.do(t, "POST", "/hangup", `{"amount":1}`, "Idempotency-Key", key)
	return key, r, s.executions(t, key), s.envoyStat(t, "cluster.backend.upstream_rq_retry")
}

// TestRetry_ResetAfterExecutingIsNotRetried: the backend ran the request
// and reset the connection before answering. reset-before-request does not
// fire (Envoy had sent the request): the backend ran it once, the client
// gets Envoy's 503, and the key is held as an unknown outcome (a retry gets
// 409 outcome-unknown, never a second run).
func TestRetry_ResetAfterExecutingIsNotRetried(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	key, r, executions, retried := hangup(t, s)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
	require.Zero(t, retried)
	require.Equal(t, 1, executions)
	testenv.WaitFor(t, 10*time.Second, "the key marked an unknown outcome", func() bool {
		return s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`) == 1
	})
	again := s.do(t, "POST", "/hangup", `{"amount":1}`, "Idempotency-Key", key)
	require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
	require.Equal(t, problem+"outcome-unknown", again.problemType())
	require.Equal(t, 1, s.executions(t, key))
	t.Logf("reset after executing, shipped retry policy: Envoy retries %d, executions %d, retry %d %s",
		retried, executions, again.status, again.problemType())
}

// TestRetry_ResetPolicyRunsTwice is the fault test of the one above: with
// retry_on reset (retry any reset, a common "resilience" setting), the
// router re-sends the request the backend already ran, three times in all.
func TestRetry_ResetPolicyRunsTwice(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{{shippedRetryOn, keyedRetryAnchor + "retry_on: reset,connect-failure\n"}}})
	_, r, executions, retried := hangup(t, s)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
	require.Equal(t, 2, retried)
	require.Equal(t, 3, executions, "the unsafe policy runs the request again")
	t.Logf("reset after executing, retry_on reset: Envoy retries %d, executions %d", retried, executions)
}
