// Package otlpsink is an OpenTelemetry trace receiver for tests, built on
// the official OTLP protos (go.opentelemetry.io/proto/otlp): it accepts
// ExportTraceServiceRequest over gRPC (what Envoy's OpenTelemetry tracer
// sends) and over HTTP as protobuf on /v1/traces (OTLP/HTTP), on loopback,
// and keeps every span it receives.
package otlpsink

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Span is one received span, flattened for assertions.
type Span struct {
	Service  string // the resource's service.name
	Name     string
	TraceID  string // hex
	SpanID   string // hex
	ParentID string // hex; "" for a root span
	Kind     tracepb.Span_SpanKind
	Attrs    map[string]string
	Start    time.Time
	Duration time.Duration
}

// Sink receives spans on a gRPC and an HTTP listener.
type Sink struct {
	coltracepb.UnimplementedTraceServiceServer

	// GRPCAddr and HTTPAddr are host:port on 127.0.0.1.
	GRPCAddr, HTTPAddr string

	grpc *grpc.Server
	http *http.Server

	mu    sync.Mutex
	spans []Span
}

// Start listens on two free loopback ports.
func Start() (*Sink, error) {
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		gl.Close()
		return nil, err
	}
	s := &Sink{GRPCAddr: gl.Addr().String(), HTTPAddr: hl.Addr().String(), grpc: grpc.NewServer()}
	coltracepb.RegisterTraceServiceServer(s.grpc, s)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", s.serveHTTP)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.grpc.Serve(gl) }()
	go func() { _ = s.http.Serve(hl) }()
	return s, nil
}

// New is Start for a test, stopped in t.Cleanup.
func New(t testing.TB) *Sink {
	t.Helper()
	s, err := Start()
	if err != nil {
		t.Fatalf("otlpsink: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Stop stops both servers.
func (s *Sink) Stop() {
	s.grpc.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(ctx)
}

// Export implements the OTLP gRPC trace service.
func (s *Sink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// serveHTTP is OTLP/HTTP with a protobuf body (JSON is not accepted).
func (s *Sink) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "want application/x-protobuf, got "+ct, http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.add(&req)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (s *Sink) add(req *coltracepb.ExportTraceServiceRequest) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				got = append(got, Span{
					Service: service, Name: sp.GetName(), Kind: sp.GetKind(),
					TraceID: hex.EncodeToString(sp.GetTraceId()), SpanID: hex.EncodeToString(sp.GetSpanId()),
					ParentID: hex.EncodeToString(sp.GetParentSpanId()), Attrs: attrs(sp.GetAttributes()),
					Start:    time.Unix(0, int64(sp.GetStartTimeUnixNano())),
					Duration: time.Duration(sp.GetEndTimeUnixNano() - sp.GetStartTimeUnixNano()),
				})
			}
		}
	}
	s.mu.Lock()
	s.spans = append(s.spans, got...)
	s.mu.Unlock()
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = valueString(kv.GetValue())
	}
	return m
}

func valueString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	}
	return v.String()
}

// Spans returns every span received so far.
func (s *Sink) Spans() []Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Span(nil), s.spans...)
}

// Trace returns the spans of one trace.
func (s *Sink) Trace(traceID string) []Span {
	var out []Span
	for _, sp := range s.Spans() {
		if sp.TraceID == traceID {
			out = append(out, sp)
		}
	}
	return out
}

// ErrNoSpan is returned by Find when no span matches yet.
var ErrNoSpan = errors.New("otlpsink: no such span")

// Find returns the first span for which match holds.
func (s *Sink) Find(match func(Span) bool) (Span, error) {
	for _, sp := range s.Spans() {
		if match(sp) {
			return sp, nil
		}
	}
	return Span{}, ErrNoSpan
}
