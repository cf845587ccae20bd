package processor

// Envoy's router retries inside one downstream request: the ext_proc
// stream, and so idemproxy's one lock, covers every attempt, so a retry
// policy can run a keyed request upstream twice behind idemproxy's back.
// With include_attempt_count_in_response on the virtual host, Envoy puts
// the attempt count (x-envoy-attempt-count) on the response headers that
// reach ext_proc, on upstream answers and on its own local replies alike.
//
// Whether an earlier attempt reached the upstream cannot be read from the
// response: measured with Envoy 1.36.2 and 1.40.0 on the attributes
// ext_proc receives, response.flags (UF, URX...), response.code_details
// and upstream.transport_failure_reason describe the last attempt only.
// After a connect failure and then a 200, or a 503 and then a 200, or a
// reset and then a 200, the final response is the same: flags 0, code
// details "via_upstream", no failure reason; only the attempt count
// (upstream.request_attempt_count, x-envoy-attempt-count) differs. So a route says what its retry policy does
// (x-idemproxy-retries, policy.go): never-sent when it only re-sends
// requests that never reached the upstream (retry_on reset-before-request,
// connect-failure, refused-stream); otherwise an attempt count above 1
// means an earlier attempt may have run.

import (
	"strconv"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Values of x-idemproxy-retries.
const (
	retriesNeverSent = "never-sent"
	retriesMayRun    = "may-run"
)

// Values of idemproxy_upstream_retries_total's kind label.
const (
	retryMayHaveRun   = "may_have_run"        // alerted: the request may have run more than once
	retryDeclaredSafe = "declared_never_sent" // the route says its retries never re-run a request
)

// attemptCountHeader is where Envoy puts the attempt count.
const attemptCountHeader = "x-envoy-attempt-count"

// maxRetryRoutes bounds the routes remembered for logging once per route:
// the authority comes from the client, so the set must not grow without end.
const maxRetryRoutes = 256

// upstreamAttempts returns Envoy's attempt count, or 0 when the response
// does not carry a valid one (the attempt counts are off).
func upstreamAttempts(hs []*corev3.HeaderValue) int {
	for _, h := range hs {
		if h.GetKey() == attemptCountHeader {
			n, err := strconv.Atoi(headerValue(h))
			if err != nil || n < 1 {
				return 0
			}
			return n
		}
	}
	return 0
}

// routeOf names a request's route for operators: its authority and the
// first segment of its path (a route's prefix, mostly), never the query or
// the rest of the path, which may identify a customer.
func routeOf(authority, path string) string {
	path, _, _ = strings.Cut(path, "?")
	if i := strings.IndexByte(strings.TrimPrefix(path, "/"), '/'); i >= 0 {
		path = path[:i+2]
	}
	return strings.ToLower(authority) + path
}

// retryLog remembers the routes already logged, up to maxRetryRoutes.
type retryLog struct {
	mu     sync.Mutex
	routes map[string]struct{}
	full   bool
}

// first says whether route is logged for the first time; once the set is
// full, only the first route past it is, as a summary.
func (r *retryLog) first(route string) (first, overflow bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.routes[route]; ok {
		return false, false
	}
	if len(r.routes) >= maxRetryRoutes {
		if r.full {
			return false, false
		}
		r.full = true
		return false, true
	}
	if r.routes == nil {
		r.routes = make(map[string]struct{})
	}
	r.routes[route] = struct{}{}
	return true, false
}

// retried looks at the attempt count of a keyed response and says whether
// an earlier attempt may have run upstream: Envoy retried the request and
// the route does not declare that its retries only re-send never-sent
// requests. It counts every retried response, and logs the first of each
// route.
func (e *exchange) retried(attempts int) bool {
	if attempts <= 1 {
		return false
	}
	if e.pol.retriesNeverSent {
		e.srv.metrics.upstreamRetries.WithLabelValues(retryDeclaredSafe).Inc()
		e.logger().Debug("Envoy retried the request upstream; the route declares that its retries never re-send a request that reached the upstream",
			"attempts", attempts, "route", e.req.route)
		return false
	}
	e.srv.metrics.upstreamRetries.WithLabelValues(retryMayHaveRun).Inc()
	switch first, overflow := e.srv.retryLog.first(e.req.route); {
	case first:
		e.logger().Error("Envoy retried a keyed request upstream, so it may have run more than once: "+
			"give this route a retry policy that only re-sends requests that never reached the upstream "+
			"(retry_on: reset-before-request, or connect-failure,refused-stream) or none, and then declare it with "+
			mdRetries+": "+retriesNeverSent+" in its ext_proc grpc_initial_metadata (docs/envoy-and-mesh.md, Retries); "+
			"logged once per route, counted in idemproxy_upstream_retries_total",
			"route", e.req.route, "attempts", attempts)
	case overflow:
		e.logger().Error("Envoy retried keyed requests upstream on more routes than are logged one by one; "+
			"see idemproxy_upstream_retries_total", "routes_logged", maxRetryRoutes, "route", e.req.route)
	default:
		e.logger().Debug("Envoy retried a keyed request upstream; it may have run more than once",
			"route", e.req.route, "attempts", attempts)
	}
	return true
}
