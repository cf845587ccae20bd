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

func TestTracingEnabled(t *testing.T) {
	tests := []struct {
		name     string
		env      env
		on       bool
		protocol string
		err      string
	}{
		{"off by default", env{}, false, "", ""},
		{"an endpoint turns it on, OTLP/HTTP by default", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, true, "http/protobuf", ""},
		{"a traces endpoint too", env{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, true, "http/protobuf", ""},
		{"the exporter named", env{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, "grpc", ""},
		{"the traces protocol wins", env{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, "http/protobuf", ""},
		{"none", env{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false, "", ""},
		{"SDK disabled", env{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false, "", ""},
		{"another exporter is refused", env{"OTEL_TRACES_EXPORTER": "zipkin"}, false, "", "otlp only"},
		{"another protocol is refused", env{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, false, "", "grpc or http/protobuf"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			protocol, on, err := tracingEnabled(tc.env.get)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				_, err := parseSettings(nil, tc.env.get, nil)
				var usage usageError
				require.ErrorAs(t, err, &usage, "a bad OTEL_* setting stops the start (exit 2)")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.on, on)
			require.Equal(t, tc.protocol, protocol)
		})
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
