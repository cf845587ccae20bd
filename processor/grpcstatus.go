package processor

// idemproxy's own answers to gRPC calls: a gRPC status, not an HTTP body.
// A gRPC client reads only grpc-status and grpc-message; a 409 with a JSON
// body reaches it as an opaque UNKNOWN or INTERNAL that its retry policy
// cannot tell from a failure of the service. So a refusal of a gRPC request
// becomes a trailers-only response (HTTP 200, content-type application/grpc,
// grpc-status, grpc-message), whatever the route's --error-format: the
// format shapes HTTP bodies, and a gRPC client reads none.
//
// The codes are chosen by what retry policies do with them: gRPC's
// retryPolicy retries only the codes its retryableStatusCodes lists, and
// the usual lists (grpc-go's examples, Google's client libraries) name
// UNAVAILABLE, often DEADLINE_EXCEEDED, sometimes RESOURCE_EXHAUSTED and
// ABORTED. Only a refusal that a retry with the same key can get past is
// UNAVAILABLE; one whose answer a retry cannot change is a code no policy
// retries. docs/grpc.md has the table and the reasons.

import (
	"strconv"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// pushbackHeader is gRPC's server pushback: a client whose retry policy
// allows the code waits this many milliseconds before its next attempt,
// instead of its own backoff.
const pushbackHeader = "grpc-retry-pushback-ms"

// minPushback is the shortest pushback sent: a duplicate of a call that has
// only just begun would otherwise be told to retry at once and spend its
// policy's few attempts (grpc-go allows at most 5) in a burst.
const minPushback = 100 * time.Millisecond

// grpcCodes is the status of each problem type for a gRPC request.
var grpcCodes = map[string]codes.Code{
	// Transient, and the request was not run: a retry with the same key may
	// succeed, so it is the code retry policies retry.
	probInProgress.slug:   codes.Unavailable,
	probStoreUnavail.slug: codes.Unavailable,
	// The key was used with another message: the client's error, which no
	// retry with this key changes; it depends on the key's earlier use (the
	// store's state), which is FAILED_PRECONDITION in gRPC's terms, not
	// INVALID_ARGUMENT ("regardless of the state of the system").
	probMismatch.slug: codes.FailedPrecondition,
	// The first call may have run, or ran and its answer cannot be given:
	// final for this key. Not ABORTED, which some policies retry and which
	// says the call did not happen.
	probOutcomeUnknown.slug: codes.FailedPrecondition,
	probNotStored.slug:      codes.FailedPrecondition,
	// Lasts until an operator acknowledges the reset (or the retention
	// passes): longer than any retry policy's attempts, so not UNAVAILABLE.
	probStoreReset.slug:       codes.FailedPrecondition,
	probInvalidKey.slug:       codes.InvalidArgument,
	probKeyRequired.slug:      codes.InvalidArgument,
	probHeadersTooLarge.slug:  codes.ResourceExhausted, // as gRPC reports metadata over its limit
	probIdentityRequired.slug: codes.Unauthenticated,
	probMisconfigured.slug:    codes.Internal,
}

// isGRPC reports whether a request's content-type makes it a gRPC call, as
// Envoy decides it: application/grpc, alone or with a +suffix or
// parameters. gRPC-Web (application/grpc-web...) is not: its replies are
// HTTP.
func isGRPC(contentType string) bool {
	rest, ok := strings.CutPrefix(strings.ToLower(contentType), "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// grpcReply answers refusal r to a gRPC request: a trailers-only response
// whose grpc-message is the problem type and the detail, with the type in
// Idempotency-Problem metadata as for HTTP. Envoy turns an immediate
// response to a gRPC request into exactly this form from grpc_status; the
// headers say the same, so the answer does not depend on Envoy noticing.
func grpcReply(r refused) *extprocv3.ProcessingResponse {
	code, ok := grpcCodes[r.p.slug]
	if !ok {
		code = codes.Internal
	}
	hs := []idem.Header{
		{Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: strconv.Itoa(int(code))},
		{Name: "grpc-message", Value: grpcPercentEncode(problemBase + r.p.slug + ": " + r.detail)},
		{Name: problemHeader, Value: problemBase + r.p.slug},
	}
	if ms := r.pushbackMillis(); code == codes.Unavailable && ms > 0 {
		hs = append(hs, idem.Header{Name: pushbackHeader, Value: strconv.FormatInt(ms, 10)})
	}
	resp := immediate(200, hs, nil, "idemproxy_"+r.p.slug)
	resp.GetImmediateResponse().GrpcStatus = &extprocv3.GrpcStatus{Status: uint32(code)}
	return resp
}

// pushbackMillis is the pushback of a refusal: the in-progress estimate
// (retryafter.go) to the millisecond, at least minPushback, or else its
// Retry-After seconds; 0 for none.
func (r refused) pushbackMillis() int64 {
	if r.wait > 0 {
		return max(r.wait, minPushback).Milliseconds()
	}
	s, err := strconv.ParseInt(r.retryAfter, 10, 64)
	if err != nil || s <= 0 {
		return 0
	}
	return s * 1000
}

// grpcPercentEncode encodes a grpc-message as the gRPC HTTP/2 protocol
// requires: bytes outside printable ASCII, and '%', as %XX.
func grpcPercentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteString("%" + strings.ToUpper(strconv.FormatUint(uint64(c)|0x100, 16)[1:]))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
