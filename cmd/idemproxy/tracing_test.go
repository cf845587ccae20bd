package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/otlpsink"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestParseSettings_badTracingEnvironment: an OTEL_* setting tracing
// cannot follow stops the start (exit 2).
func TestParseSettings_badTracingEnvironment(t *testing.T) {
	for _, e := range []env{
		{"OTEL_TRACES_EXPORTER": "zipkin"},
		{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
	} {
		_, err := parseSettings(nil, e.get, nil)
		var usage usageError
		require.ErrorAs(t, err, &usage, "a bad OTEL_* setting stops the start (exit 2)")
	}
}

// TestRun_tracesOverGRPCAndFlushesOnExit exports over OTLP/gRPC with a
// batch delay far longer than the test: the spans can only arrive through
// the flush at shutdown.
func TestRun_tracesOverGRPCAndFlushesOnExit(t *testing.T) {
	rs := redistopo.Start(t)
	sink := otlpsink.New(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+sink.GRPCAddr)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
	t.Setenv("OTEL_SERVICE_NAME", "idemproxy-test")
	logs, done, cancel := runInBackground(t, os.Getenv, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-url", rs.URL(), "--health-interval", "50ms")
	grpcAddr := logAddr(t, logs, done, "grpc listening")
	testenv.WaitFor(t, waitFor, "readiness", func() bool {
		return strings.Contains(logs.String(), "redis maxmemory-policy is noeviction")
	})

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
			method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
			return streamer(ctx, desc, cc, method, opts...)
		}))
	require.NoError(t, err)
	defer conn.Close()
	exchange(t, conn, true)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
		done <- nil
	case <-time.After(waitFor):
		t.Fatal("run did not return")
	}
	spans := sink.Trace("0af7651916cd43dd8448eb211c80319c")
	require.NotEmpty(t, spans, "the spans were flushed on the way out")
	var stream otlpsink.Span
	for _, sp := range spans {
		require.Equal(t, "idemproxy-test", sp.Service, "OTEL_SERVICE_NAME is read")
		if sp.ParentID == "b7ad6b7169203331" {
			stream = sp
		}
	}
	require.Equal(t, "acquired", stream.Attrs["idemproxy.outcome"])
	require.Equal(t, "stored", stream.Attrs["idemproxy.result"])
	redis := 0
	for _, sp := range spans {
		if sp.Attrs["db.system"] == "redis" {
			redis++
		}
	}
	require.Positive(t, redis)
	for _, sp := range sink.Spans() {
		require.NotEmpty(t, sp.ParentID, "no root spans: health checks make no traces (%s)", sp.Name)
	}
}
