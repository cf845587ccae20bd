package processor

// Replying: everything a verdict implies, done once (the outcome's metric,
// span attribute and metadata, its log line, shadow mode, and the reply of
// the message being answered).
//
// Shadow mode (--mode=shadow, or per route x-idemproxy-mode: shadow): the
// processor takes part exactly as in enforcement (acquires, fingerprints,
// stores responses) but never changes what the client gets. What it would
// have refused or replayed goes upstream instead, counted and logged, so a
// team can see what enforcement would do to its real traffic before it may
// refuse anything. Switching a route back to enforce is route metadata: no
// restart, and the records made in shadow are the ones enforcement reads.

import (
	"context"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
)

// phase is the request message a verdict answers, which decides the shape
// of its CONTINUE.
type phase int

const (
	// phaseScreen answers the request headers before the request takes
	// part (refused, or not keyed): its CONTINUE lets the request go and
	// skips the rest of the stream.
	phaseScreen phase = iota
	// phaseHeaders answers request headers that end the request (no body),
	// after the decision on its key.
	phaseHeaders
	// phaseBody answers the buffered request body, after the decision on
	// its key.
	phaseBody
)

// cont is the CONTINUE of the message p answers.
func (p phase) cont() *extprocv3.ProcessingResponse {
	switch p {
	case phaseScreen:
		r := continueRequestHeaders()
		r.ModeOverride = skipRest()
		return r
	case phaseHeaders:
		return continueRequestHeaders()
	default:
		return continueRequestBody()
	}
}

// reply records verdict v and answers the message of phase p with it: the
// immediate response, or, for a request going upstream, the CONTINUE with
// its fence. In shadow mode an immediate response is counted and logged
// instead, and the request goes upstream without a fence (it holds no
// grant) and without a client's own.
func (e *exchange) reply(v verdict, p phase) *extprocv3.ProcessingResponse {
	e.decided(v.outcome)
	if v.note.msg != "" {
		e.logger().Log(context.Background(), v.note.level, v.note.msg, v.note.attrs...)
	}
	answer := v.answer
	if v.refused != nil {
		r := *v.refused
		r.wait = v.hint.wait
		answer = problemReply(r, e.shape())
	}
	if v.token != "" {
		e.req.rerouted = true
		return rerouted(p, v.token, e.req.path)
	}
	if v.via != nil {
		// Shadow mode (viaEndpoint issued no token): the status it
		// would have replayed, for the log line below.
		answer = immediate(v.via.Status, nil, nil, "")
	}
	if answer == nil {
		resp := p.cont()
		if v.fence > 0 {
			e.fenced(v.fence)
		}
		if v.fenced {
			resp = e.srv.fence(resp, v.fence)
		}
		return resp
	}
	if !e.pol.shadow() {
		if v.hint.basis != "" {
			e.srv.metrics.retryAfter.WithLabelValues(v.hint.basis).Observe(v.hint.wait.Seconds())
		}
		return answer
	}
	e.srv.metrics.shadow.WithLabelValues(v.outcome).Inc()
	// The scope label (authority, identity hash), never the key or body.
	attrs := []any{"would", v.outcome, "status", int(answer.GetImmediateResponse().GetStatus().GetCode()), "scope", e.req.scope}
	if g := answer.GetImmediateResponse().GetGrpcStatus(); g != nil {
		// A gRPC answer's status is 200: its code says what it would have been.
		attrs = append(attrs, "grpc_status", codes.Code(g.GetStatus()).String())
	}
	e.logger().Info("shadow mode: passed upstream what enforcement would have answered itself", attrs...)
	return e.srv.fence(p.cont(), 0)
}
