package processor

import (
	"strings"

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

func originOf(req *extprocv3.ProcessingRequest) responseOrigin {
	details := req.GetAttributes()[extProcAttrs].GetFields()[codeDetailsAttr].GetStringValue()
	if details == "" || details == "via_upstream" {
		return originUpstream
	}
	for _, s := range neverSent {
		if strings.Contains(details, s) {
			return originNeverSent
		}
	}
	return originLocalUnknown
}
