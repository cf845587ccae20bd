package processor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// lockState tracks the key this stream holds, which decides what an early
// end of the stream means.
type lockState int

const (
	lockNone       lockState = iota // no lock: not taking part, or refused
	lockUnanswered                  // Acquire failed; Redis may hold our lock all the same
	lockAcquired                    // acquired; the CONTINUE is not yet sent
	lockForwarded                   // the request may have reached upstream
	lockDone                        // stored, released, or given up
)

// exchange is the state of one stream, i.e. one HTTP request. Only the
// Process goroutine touches it, apart from the watchdog it owns.
type exchange struct {
	srv       *Server
	ctx       context.Context                           // the stream's, carrying its span
	send      func(*extprocv3.ProcessingResponse) error // for a message besides the one reply (wait)
	id        uint64
	log       *slog.Logger // made on first use: most requests log nothing
	pol       policy
	policyErr error // invalid per-route metadata: every keyed request is refused

	req  request  // what the request headers said
	lock heldLock // the key this stream holds, if any
	resp capture  // the response being stored
	obs  observed // what operators see (observe.go)
}

// request is what the stream learnt of the request.
type request struct {
	sawHeaders   bool
	waitingBody  bool // key found; the fingerprint needs the body
	bodyBuffered bool // Envoy said it buffers the request body (protocol_config)
	method, path string
	key          string // composite store key; "" when not taking part
	scope        string // for operators: authority and identity hash
	legacyKey    string // the previous version's key, during --scope-legacy-until
	route        string // authority and path prefix, for logs (attempts.go, routeOf)
	grpc         bool   // a gRPC call: refusals are gRPC statuses (grpcstatus.go)
	rerouted     bool   // sent to the replay endpoint (reroute.go); its response is checked
}

// heldLock is the key this stream holds (or, after a failed acquire, may
// hold), and what is left to do about it.
type heldLock struct {
	token string
	state lockState
	dog   *watchdog
	// leaseEnd is, on our clock, when the lease our token holds (or, after
	// a failed acquire, may hold) ends unless renewed: the acquire's or
	// the last successful renewal's sending plus the lock TTL. Settling
	// writes are retried at least until then.
	leaseEnd time.Time
	// granted is when the key became ours: a stored response's duration
	// since is the route's sample for Retry-After (retryafter.go).
	granted time.Time
	pending *write // a settling write that failed in band; finish retries it
	// settling is when the settling write began: its logs say how long
	// it was tried, not how long it might have been.
	settling time.Time
}

// capture is the response of an acquired key, kept to be stored.
type capture struct {
	collecting bool // storing the response body
	rec        idem.Record
	body       bytes.Buffer
	// declared is the response's Trailer header (the names of the
	// trailers it announces), not stored unless trailers follow.
	declared []idem.Header
}

// observed is what operators see (observe.go): the decision, the grant's
// fence, the key's fate, and whether the next reply must carry them.
type observed struct {
	outcome, result string
	fence           int64
	due             bool // the next reply must carry metadata
	sent            bool // a reply carried the outcome
}

func (s *Server) newExchange(ctx context.Context, send func(*extprocv3.ProcessingResponse) error) *exchange {
	e := &exchange{srv: s, ctx: ctx, send: send, id: s.streams.Add(1)}
	e.pol, e.policyErr = s.policyFor(ctx)
	return e
}

// span is the stream's span: the no-op span when tracing is off.
func (e *exchange) span() trace.Span { return trace.SpanFromContext(e.ctx) }

// logger is the stream's logger, tagged with its number.
func (e *exchange) logger() *slog.Logger {
	if e.log == nil {
		e.log = e.srv.log.With("stream", e.id)
	}
	return e.log
}

// handle returns the one reply a message needs; an error ends the stream.
func (e *exchange) handle(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	if pc := req.GetProtocolConfig(); pc != nil {
		e.srv.checkProtocol(pc)
	}
	switch m := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return e.onRequestHeaders(m.RequestHeaders, req.GetProtocolConfig(), req.GetMetadataContext().GetFilterMetadata())
	case *extprocv3.ProcessingRequest_RequestBody:
		return e.onRequestBody(m.RequestBody)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		origin, withDetails := originOf(req)
		e.srv.checkResponse(withDetails)
		return e.onResponseHeaders(m.ResponseHeaders, origin), nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return e.onResponseBody(m.ResponseBody), nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return continueRequestTrailers(), nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return e.onResponseTrailers(m.ResponseTrailers), nil
	default:
		return nil, fmt.Errorf("processor: unexpected message %T", m)
	}
}

// sent runs after a reply reached the stream: from then on an acquired
// request may be upstream.
func (e *exchange) sent() {
	if e.lock.state == lockAcquired {
		e.lock.state = lockForwarded
	}
}

// onRequestHeaders screens the request (screen), then decides on its key
// at once, or once the buffered body completes it.
func (e *exchange) onRequestHeaders(h *extprocv3.HttpHeaders, pc *extprocv3.ProtocolConfiguration, md map[string]*structpb.Struct) (*extprocv3.ProcessingResponse, error) {
	if e.req.sawHeaders {
		return nil, errors.New("processor: request headers received twice")
	}
	e.req.sawHeaders = true
	if v, done := e.screen(h, md); done {
		return e.reply(v, phaseScreen), nil
	}
	if !h.GetEndOfStream() && pc != nil && pc.GetRequestBodyMode() != filterv3.ProcessingMode_BUFFERED {
		// Without the buffered body there is no fingerprint, and answering
		// the headers would let the request upstream unguarded.
		return e.reply(misconfigured("The proxy is not configured to check idempotency keys on requests with a body; the request was not run.").
			logged(slog.LevelError, "Envoy does not buffer the request body: set request_body_mode BUFFERED in the ext_proc filter",
				"request_body_mode", pc.GetRequestBodyMode().String()), phaseScreen), nil
	}
	if !h.GetEndOfStream() {
		// BUFFERED: Envoy holds the headers until we answer the body.
		e.req.waitingBody = true
		e.req.bodyBuffered = pc.GetRequestBodyMode() == filterv3.ProcessingMode_BUFFERED
		resp := continueRequestHeaders()
		if e.req.grpc && pc != nil {
			resp.ModeOverride = withResponseTrailers(pc)
		}
		return resp, nil
	}
	return e.decide(nil, phaseHeaders), nil
}

// screen reads the request headers and, for a request that does not take
// part (no key, or a method outside --methods) or cannot (an invalid key
// or route policy, no room for the fence, no verified identity), returns
// its verdict. Otherwise it sets the request's store key and scope.
func (e *exchange) screen(h *extprocv3.HttpHeaders, md map[string]*structpb.Struct) (v verdict, done bool) {
	var keys []string
	rs := requestScope{headers: make([]string, len(e.srv.cfg.ScopeHeaders))}
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch name := hv.GetKey(); {
		case name == ":method":
			e.req.method = headerValue(hv)
		case name == ":path":
			e.req.path = headerValue(hv)
		case e.srv.keyHdrs[name]:
			keys = append(keys, headerValue(hv))
		case name == "content-type":
			e.req.grpc = isGRPC(headerValue(hv))
			e.srv.readScope(hv, &rs)
		default:
			e.srv.readScope(hv, &rs)
		}
	}
	if e.policyErr != nil {
		return misconfigured("The proxy's idempotency policy for this route is invalid; the request was not run.").
			logged(slog.LevelError, "invalid per-route policy in the stream's gRPC metadata (ExtProcPerRoute grpc_initial_metadata)",
				"error", e.policyErr.Error()), true
	}
	keyed := len(keys) > 0
	if e.srv.methods != nil && !e.srv.methods[e.req.method] {
		keys = nil
	}
	switch {
	case len(keys) == 0 && e.pol.keyRequired:
		return keyRequired(), true
	case len(keys) == 0:
		return passthrough(keyed), true
	}
	key, err := singleKey(keys)
	if err != nil {
		return invalidKey(err), true
	}
	if p := e.srv.headroom(h.GetHeaders().GetHeaders()); p != "" {
		return headersTooLarge(p), true
	}
	identity, err := e.srv.identity(rs, md)
	if err != nil {
		return identityRequired(e.srv.cfg.ScopeJWTClaim), true
	}
	parts := e.srv.scopeParts(rs, identity)
	e.req.key, e.req.scope = storeKey(parts, key), scopeLabel(parts)
	e.req.route = routeOf(rs.authority, e.req.path)
	if time.Now().Before(e.srv.cfg.ScopeLegacyUntil) {
		if legacy := storeKey(legacyParts(rs), key); legacy != e.req.key {
			e.req.legacyKey = legacy
		}
	}
	return verdict{}, false
}

// singleKey parses every key header; several must agree.
func singleKey(raw []string) (string, error) {
	var key string
	for i, r := range raw {
		k, err := parseKey(r)
		if err != nil {
			return "", err
		}
		if i > 0 && k != key {
			return "", errKeyConflict
		}
		key = k
	}
	return key, nil
}

func (e *exchange) onRequestBody(b *extprocv3.HttpBody) (*extprocv3.ProcessingResponse, error) {
	if !e.req.waitingBody {
		return continueRequestBody(), nil
	}
	if !b.GetEndOfStream() && !e.req.bodyBuffered {
		// Only BUFFERED mode (one complete body) gives a sound fingerprint.
		// A buffered body without end_of_stream is whole too: trailers
		// follow it (HTTP/2), and they are not part of the fingerprint.
		e.srv.configProblem(problemBodyNotBuffered)
		return nil, errors.New("processor: request body is not buffered: configure request_body_mode BUFFERED")
	}
	e.req.waitingBody = false
	return e.decide(b.GetBody(), phaseBody), nil
}
