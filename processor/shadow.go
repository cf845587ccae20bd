package processor

// Shadow mode (--mode=shadow, or per route x-idemproxy-mode: shadow): the
// processor takes part exactly as in enforcement (acquires, fingerprints,
// stores responses) but never changes what the client gets. What it would
// have refused or replayed goes upstream instead, counted and logged, so a
// team can see what enforcement would do to its real traffic before it may
// refuse anything. Switching a route back to enforce is route metadata: no
// restart, and the records made in shadow are the ones enforcement reads.

import (
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// refuse answers with resp in enforcement. In shadow it counts and logs
// what would have happened, and lets the request through instead, without
// a fence (it holds no grant) and without a client's own.
func (e *exchange) refuse(would string, resp *extprocv3.ProcessingResponse, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if !e.pol.shadow() || resp.GetImmediateResponse() == nil {
		return resp
	}
	e.srv.metrics.shadow.WithLabelValues(would).Inc()
	// The scope label (authority, identity hash), never the key or body.
	e.logger().Info("shadow mode: passed upstream what enforcement would have answered itself",
		"would", would, "status", int(resp.GetImmediateResponse().GetStatus().GetCode()), "scope", e.scope)
	return e.srv.fence(cont(), 0)
}

// forwardHeaders is the CONTINUE for a request let through at its headers:
// nothing more of it is sent to idemproxy.
func forwardHeaders() *extprocv3.ProcessingResponse {
	r := continueRequestHeaders()
	r.ModeOverride = skipRest()
	return r
}
