package processor

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// metaOf returns idemproxy's dynamic metadata on a reply, or nil.
func metaOf(resp *extprocv3.ProcessingResponse) map[string]any {
	ns := resp.GetDynamicMetadata().GetFields()[DefaultMetadataNamespace]
	if ns == nil {
		return nil
	}
	return ns.GetStructValue().AsMap()
}

func TestExchange_metadataSaysTheDecision(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	first, err := run(t, srv, endCanceled,
		keyed("POST", "meta-1", false), reqBody(`{"amount":1}`, true),
		respHeaders(false, ":status", "201"), respBody("charged", true))
	require.NoError(t, err)
	require.Len(t, first, 4)
	require.Nil(t, metaOf(first[0]), "nothing is decided before the body")
	require.Equal(t, map[string]any{MetaOutcome: "acquired", MetaFence: 1.0}, metaOf(first[1]))
	require.Nil(t, metaOf(first[2]))
	require.Equal(t, map[string]any{MetaResult: "stored"}, metaOf(first[3]),
		"the reply that stored the response says so; Envoy merges it with the outcome")

	again, err := run(t, srv, endCanceled, keyed("POST", "meta-1", false), reqBody(`{"amount":1}`, true))
	require.NoError(t, err)
	require.NotNil(t, again[1].GetImmediateResponse())
	require.Equal(t, map[string]any{MetaOutcome: "replayed"}, metaOf(again[1]), "an immediate reply carries it too")

	other, err := run(t, srv, endCanceled, keyed("POST", "meta-1", false), reqBody(`{"amount":2}`, true))
	require.NoError(t, err)
	require.Equal(t, map[string]any{MetaOutcome: "fingerprint_mismatch"}, metaOf(other[1]))
}

// tracedServer is a Server whose spans land in memory.
func tracedServer(t *testing.T) (*Server, *tracetest.InMemoryExporter, *sdktrace.TracerProvider) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	m, err := NewMetrics(prometheus.NewRegistry())
	require.NoError(t, err)
	srv, err := New(DefaultConfig(), Options{Store: newFakeStore(), Metrics: m, TracerProvider: tp,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	return srv, exp, tp
}

func TestServer_spanIsAChildOfEnvoysTraceContext(t *testing.T) {
	srv, exp, _ := tracedServer(t)
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("traceparent", "00-"+traceID+"-"+parentID+"-01"))
	st := newFakeStream(ctx)
	s := serveStream(t, srv, st)
	s.roundTrip(keyed("POST", "secret-key-value", false))
	s.roundTrip(reqBody(`{"card":"4242"}`, true))
	s.roundTrip(respHeaders(false, ":status", "201"))
	s.roundTrip(respBody("charged", true))
	s.end(endCanceled)
	require.NoError(t, s.wait())

	spans := exp.GetSpans()
	require.Len(t, spans, 1)
	sp := spans[0]
	require.Equal(t, spanName, sp.Name)
	require.Equal(t, trace.SpanKindServer, sp.SpanKind)
	require.Equal(t, traceID, sp.SpanContext.TraceID().String())
	require.Equal(t, parentID, sp.Parent.SpanID().String(), "the parent is the span Envoy sent")
	require.True(t, sp.Parent.IsRemote())
	attrs := map[string]string{}
	for _, kv := range sp.Attributes {
		attrs[string(kv.Key)] = kv.Value.Emit()
		for _, secret := range []string{"secret-key-value", "4242", "charged"} {
			require.NotContains(t, kv.Value.Emit(), secret, "never the key or a body")
		}
	}
	require.Equal(t, "acquired", attrs[MetaOutcome])
	require.Equal(t, "1", attrs[MetaFence])
	require.Equal(t, "stored", attrs[MetaResult])
	require.Equal(t, "201", attrs["http.response.status_code"])
}

func TestServer_withoutTracingNoSpanIsMade(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	require.Nil(t, srv.tracer)
	ctx, span := srv.startSpan(t.Context())
	require.False(t, span.IsRecording())
	require.Equal(t, t.Context(), ctx, "the stream's context is used as it is")
	require.False(t, strings.Contains(spanName, " "))
}

func TestExchange_metadataNamespace(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), func(c *Config) { c.MetadataNamespace = "idemproxy" })
	out, err := run(t, srv, endCanceled, keyed("POST", "ns-1", true))
	require.NoError(t, err)
	require.Equal(t, "acquired", out[0].GetDynamicMetadata().GetFields()["idemproxy"].GetStructValue().AsMap()[MetaOutcome])

	srv, _ = newTestServer(t, newFakeStore(), func(c *Config) { c.MetadataNamespace = "" })
	out, err = run(t, srv, endCanceled, keyed("POST", "ns-1", true))
	require.NoError(t, err)
	require.Nil(t, out[0].GetDynamicMetadata(), "no namespace: no metadata")
}
