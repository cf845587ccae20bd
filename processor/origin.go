package processor

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Envoy sends its own local replies (connect failure, timeout, reset)
// through the ext_proc filter like upstream responses (seen with Envoy 1.40).
// A 503 because the upstream refused the connection means the request never
// ran; a 504 because it did not answer in time means it may have run. The
// status alone cannot tell them apart, so envoy.yaml asks Envoy for the
// response.code_details attribute: "via_upstream" for a real response, a
// reason for a local reply.

// responseOrigin classifies the response headers' origin.
type responseOrigin int

const (
	originUpstream     responseOrigin = iota // the upstream answered (or Envoy did not say)
	originNeverSent                          // Envoy answered; the request did not reach the upstream
	originLocalUnknown                       // Envoy answered; the request may have reached the upstream
)

const (
	extProcAttrs    = "envoy.filters.http.ext_proc"
	codeDetailsAttr = "response.code_details"
)

// neverSent are the code details of local replies that Envoy sends before
// any byte of the request left for the upstream.
var neverSent = []string{
	"connection_failure", // remote_connection_failure, local_connection_failure
	"overflow",           // circuit breaker
	"no_healthy_upstream",
	"cluster_not_found",
	"route_not_found",
	"maintenance_mode",
}

// Without response.code_details (a config that does not ask for it:
// envoycheck.go reports it), Envoy's own reply is told by its headers. The
// router adds x-envoy-upstream-service-time to every response that came
// from the upstream (measured on Envoy 1.36.2 to 1.40.0), and its local
// replies (timeout 504, reset or connect failure 503, and the like) carry
// only :status, content-length and content-type (1.37.0 to 1.40.0; 1.36
// does not pass them through ext_proc at all).
// So a status Envoy answers itself without that header is taken for
// Envoy's reply, whose request may have run: an unknown outcome, never a
// stored response to replay. The price: an upstream's own 502, 503 or 504
// behind a router with suppress_envoy_headers is held as unknown too, and
// a connect failure (never sent) is not released.
var localReplyStatus = map[int]bool{502: true, 503: true, 504: true}

const upstreamServiceTime = "x-envoy-upstream-service-time"

// originOf classifies the response headers' origin; withDetails reports
// whether Envoy sent the response.code_details attribute.
func originOf(req *extprocv3.ProcessingRequest) (origin responseOrigin, withDetails bool) {
	details, ok := codeDetails(req)
	if !ok {
		return originByHeaders(req.GetResponseHeaders().GetHeaders().GetHeaders()), false
	}
	if details == "" || details == "via_upstream" {
		return originUpstream, true
	}
	for _, s := range neverSent {
		if strings.Contains(details, s) {
			return originNeverSent, true
		}
	}
	return originLocalUnknown, true
}

// codeDetails returns the response.code_details attribute. Envoy files it
// under envoy.filters.http.ext_proc (measured with the filter of that
// name); any other key is searched too, should a filter configured under
// another name (an Istio composite action) have it filed there.
func codeDetails(req *extprocv3.ProcessingRequest) (string, bool) {
	attrs := req.GetAttributes()
	if v, ok := attrs[extProcAttrs].GetFields()[codeDetailsAttr]; ok {
		return v.GetStringValue(), true
	}
	for _, st := range attrs {
		if v, ok := st.GetFields()[codeDetailsAttr]; ok {
			return v.GetStringValue(), true
		}
	}
	return "", false
}

// originByHeaders tells Envoy's local reply from the upstream's response
// by the headers alone (see localReplyStatus).
func originByHeaders(hs []*corev3.HeaderValue) responseOrigin {
	if !localReplyStatus[responseStatus(hs)] {
		return originUpstream
	}
	for _, h := range hs {
		if h.GetKey() == upstreamServiceTime {
			return originUpstream
		}
	}
	return originLocalUnknown
}
