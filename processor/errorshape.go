package processor

// The shapes of idemproxy's own errors. A refusal is decided once
// (verdict.go) as a problem type, a detail and a Retry-After, and rendered
// here, in one place, in the route's --error-format: RFC 9457 problem+json
// (the default), Stripe's {"error":{...}} envelope, or the operator's
// template. Whatever the shape, the problem type travels in the
// Idempotency-Problem header, so machines can branch on it everywhere.
// A gRPC request gets a gRPC status instead, whatever the format
// (grpcstatus.go).

import (
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// problemHeader carries the problem type (urn:idemproxy:problem:...) in
// every shape.
const problemHeader = "idempotency-problem"

// jsonContentType is the Content-Type of the stripe and template shapes.
const jsonContentType = "application/json"

// refused is a refusal not yet rendered: its problem, the detail, and the
// Retry-After seconds ("" for none); wait is the in-progress estimate
// before rounding (0: none), a gRPC call's pushback.
type refused struct {
	p          problemType
	detail     string
	retryAfter string
	wait       time.Duration
}

// shape is how a route renders its refusals: the format, and the parsed
// --error-template-file (nil when none was given); grpc is set per
// request, for a gRPC call, whose refusals are gRPC statuses.
type shape struct {
	format   ErrorFormat
	template *ErrorTemplate
	grpc     bool
}

// shape is the shape of the exchange's refusals: its route's error
// format, as gRPC statuses for a gRPC call.
func (e *exchange) shape() shape {
	s := e.pol.shape
	s.grpc = e.req.grpc
	return s
}

// problemReply answers refusal r in shape s: the one place a refusal's
// status, headers and body are made.
func problemReply(r refused, s shape) *extprocv3.ProcessingResponse {
	if s.grpc {
		return grpcReply(r)
	}
	status, ctype := r.p.status, problemContentType
	var body []byte
	var extra []idem.Header
	switch {
	case s.format == ErrorFormatStripe:
		se := stripeErrorOf(r.p)
		status, ctype, body = se.status, jsonContentType, se.body(r.detail)
		extra = append(extra, idem.Header{Name: stripeShouldRetry, Value: se.shouldRetry()})
	case s.format == ErrorFormatTemplate && s.template != nil:
		ctype, body = jsonContentType, s.template.render(r)
	default:
		body = r.p.body(r.detail)
	}
	hs := []idem.Header{{Name: "content-type", Value: ctype}, {Name: problemHeader, Value: problemBase + r.p.slug}}
	if r.retryAfter != "" {
		hs = append(hs, idem.Header{Name: "retry-after", Value: r.retryAfter})
	}
	return immediate(status, append(hs, extra...), body, "idemproxy_"+r.p.slug)
}
