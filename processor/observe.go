package processor

// What operators see of one request besides the metrics: the decision and
// the fate of the key as attributes of the stream's span (when tracing is
// on), and as dynamic metadata on the ext_proc replies, which Envoy keeps
// in the request's stream info for its access log. Neither ever carries
// the key or a body: keys can be secrets.

import (
	"context"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// DefaultMetadataNamespace is where Envoy stores the dynamic metadata
// idemproxy returns, unless Config.MetadataNamespace says otherwise: the
// ext_proc filter's own namespace. The top-level keys of a reply's
// dynamic_metadata are namespaces, and the filter keeps only those listed
// in its metadata_options.receiving_namespaces.untyped (Envoy 1.40).
// Envoy Gateway refuses to list namespaces under envoy.filters.http, so
// there another one is configured.
const DefaultMetadataNamespace = "envoy.filters.http.ext_proc"

// The keys of idemproxy's dynamic metadata, in MetadataNamespace, and of
// its span attributes.
const (
	// MetaOutcome is the decision: a value of idemproxy_requests_total's
	// outcome label (acquired, replayed, in_progress_conflict, ...).
	MetaOutcome = "idemproxy.outcome"
	// MetaFence is the fencing token of an acquired key.
	MetaFence = "idemproxy.fence"
	// MetaResult is what became of an acquired key, when it is known
	// while Envoy still waits for a reply: a value of
	// idemproxy_responses_total's result label (stored, released_status...).
	MetaResult = "idemproxy.result"
)

// spanName is the stream span's name, as the gRPC semantic conventions
// name server spans: package.Service/Method.
const spanName = "envoy.service.ext_proc.v3.ExternalProcessor/Process"

// startSpan starts the stream's span, a child of the trace context Envoy
// put on the stream's gRPC metadata (traceparent, from Envoy's own span
// for the ext_proc call). With tracing off it costs nothing: no metadata
// is read and the span is the no-op one.
func (s *Server) startSpan(ctx context.Context) (context.Context, trace.Span) {
	if s.tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		ctx = s.propagator.Extract(ctx, mdCarrier(md))
	}
	return s.tracer.Start(ctx, spanName, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "grpc"),
			attribute.String("rpc.service", "envoy.service.ext_proc.v3.ExternalProcessor"),
			attribute.String("rpc.method", "Process")))
}

// mdCarrier reads W3C trace context (or any propagator's fields) from
// incoming gRPC metadata, whose keys are lower-case.
type mdCarrier metadata.MD

var _ propagation.TextMapCarrier = mdCarrier(nil)

func (c mdCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c mdCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// decided records the decision for this request: the metric, the span
// attribute, and the metadata for the reply being built.
func (e *exchange) decided(outcome string) {
	e.srv.metrics.requests.WithLabelValues(outcome).Inc()
	e.obs.outcome = outcome
	e.obs.due = true
	if span := e.span(); span.IsRecording() {
		span.SetAttributes(attribute.String(MetaOutcome, outcome))
	}
}

// fenced records an acquired key's fencing token.
func (e *exchange) fenced(fence int64) {
	e.obs.fence = fence
	if span := e.span(); span.IsRecording() {
		span.SetAttributes(attribute.Int64(MetaFence, fence))
	}
}

// settledAs records what became of an acquired key.
func (e *exchange) settledAs(result string) {
	e.srv.metrics.responses.WithLabelValues(result).Inc()
	e.obs.result = result
	e.obs.due = true
	if span := e.span(); span.IsRecording() {
		span.SetAttributes(attribute.String(MetaResult, result))
		if result == resultStoreError || result == resultLeaseLost {
			span.SetStatus(codes.Error, result)
		}
	}
}

// annotate adds what was decided while handling this message to its reply.
// Envoy merges each reply's metadata into the namespace, so a later reply
// carries only what is new (the result). A request idemproxy lets pass (no key, or a method that
// does not take part) carries none: "-" in the access log means idemproxy
// did not guard it.
func (e *exchange) annotate(resp *extprocv3.ProcessingResponse) {
	if !e.obs.due || resp == nil {
		return
	}
	e.obs.due = false
	meta := e.srv.meta
	if meta == nil {
		return
	}
	outcome, result := e.obs.outcome, e.obs.result
	if e.obs.sent {
		outcome = "" // Envoy has it already
	}
	e.obs.sent = true
	switch {
	case outcome == outcomePassthrough:
	case outcome == "" && result != "":
		resp.DynamicMetadata = meta.resultOnly[result]
	case e.obs.fence == 0 && result == "":
		// Most replies carry one label value: one shared, read-only
		// message per value (protobuf messages may be marshalled
		// concurrently), so they cost no allocation.
		resp.DynamicMetadata = meta.outcomeOnly[outcome]
	default:
		fields := make(map[string]*structpb.Value, 3)
		fields[MetaOutcome] = meta.values[outcome]
		if e.obs.fence > 0 {
			fields[MetaFence] = structpb.NewNumberValue(float64(e.obs.fence))
		}
		if result != "" {
			fields[MetaResult] = meta.values[result]
		}
		resp.DynamicMetadata = meta.namespaced(fields)
	}
}

// metaCache holds, for one namespace, every outcome and result as a
// metadata value and every single-value reply metadata, built once.
type metaCache struct {
	ns                      string
	values                  map[string]*structpb.Value
	outcomeOnly, resultOnly map[string]*structpb.Struct
}

func newMetaCache(ns string) *metaCache {
	if ns == "" {
		return nil
	}
	c := &metaCache{ns: ns, values: map[string]*structpb.Value{},
		outcomeOnly: map[string]*structpb.Struct{}, resultOnly: map[string]*structpb.Struct{}}
	for _, o := range allOutcomes {
		c.values[o] = structpb.NewStringValue(o)
		c.outcomeOnly[o] = c.namespaced(map[string]*structpb.Value{MetaOutcome: c.values[o]})
	}
	for _, r := range allResults {
		c.values[r] = structpb.NewStringValue(r)
		c.resultOnly[r] = c.namespaced(map[string]*structpb.Value{MetaResult: c.values[r]})
	}
	return c
}

func (c *metaCache) namespaced(fields map[string]*structpb.Value) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		c.ns: structpb.NewStructValue(&structpb.Struct{Fields: fields}),
	}}
}

// endSpan notes the response status and ends the stream's span.
func (e *exchange) endSpan() {
	span := e.span()
	if span.IsRecording() && e.resp.rec.Status > 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", e.resp.rec.Status))
	}
	span.End()
}
