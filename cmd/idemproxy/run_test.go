package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

const (
	waitFor = 10 * time.Second
	poll    = 20 * time.Millisecond
)

func TestRun_servesAndFollowsRedis(t *testing.T) {
	rs := redistopo.Start(t)
	logs, done, cancel := runInBackground(t, env{}.get, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-url", rs.URL(), "--health-interval", "50ms", "--redis-timeout", "300ms", "--shutdown-grace", "2s")

	grpcAddr := logAddr(t, logs, done, "grpc listening")
	adminAddr := logAddr(t, logs, done, "admin listening")
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + adminAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, _ := get("/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Eventually(t, func() bool { c, _ := get("/readyz"); return c == http.StatusOK }, waitFor, poll)
	code, body := get("/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "idemproxy_requests_total")
	require.Contains(t, body, "go_goroutines")
	require.Contains(t, body, "\nidemproxy_ready 1\n")

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	healthIs := func(want healthpb.HealthCheckResponse_ServingStatus) func() bool {
		return func() bool {
			for _, svc := range []string{"", extProcService} {
				r, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
				if err != nil || r.GetStatus() != want {
					return false
				}
			}
			return true
		}
	}
	require.Eventually(t, healthIs(healthpb.HealthCheckResponse_SERVING), waitFor, poll)

	// One request through the real store, then its replay.
	first := exchange(t, conn, true)
	require.NotNil(t, first.GetRequestHeaders(), "the first request goes upstream")
	replay := exchange(t, conn, false)
	ir := replay.GetImmediateResponse()
	require.NotNil(t, ir, "the retry is answered from Redis")
	require.EqualValues(t, 201, ir.GetStatus().GetCode())
	require.Equal(t, "charged", string(ir.GetBody()))

	rs.Stop()
	require.Eventually(t, func() bool { c, _ := get("/readyz"); return c == http.StatusServiceUnavailable }, waitFor, poll)
	require.Eventually(t, healthIs(healthpb.HealthCheckResponse_NOT_SERVING), waitFor, poll)
	_, body = get("/metrics")
	require.Contains(t, body, "\nidemproxy_ready 0\n")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
		done <- nil // for the cleanup
	case <-time.After(waitFor):
		t.Fatal("run did not return after its context ended")
	}
	require.Contains(t, logs.String(), `"msg":"stopped"`)
}

// exchange runs one keyed POST over ext_proc. With respond, the request is
// let through and a 201 response is fed back for storage; it returns the
// reply to the request headers.
func exchange(t *testing.T, conn *grpc.ClientConn, respond bool) *extprocv3.ProcessingResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	require.NoError(t, err)
	hdrs := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	require.NoError(t, stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true, Headers: hdrs(
			":method", "POST", ":path", "/charge", ":authority", "run.test", "idempotency-key", "run-1")}}}))
	first, err := stream.Recv()
	require.NoError(t, err)
	if respond {
		require.NoError(t, stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &extprocv3.HttpHeaders{Headers: hdrs(":status", "201")}}}))
		_, err = stream.Recv()
		require.NoError(t, err)
		require.NoError(t, stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
			ResponseBody: &extprocv3.HttpBody{Body: []byte("charged"), EndOfStream: true}}}))
		_, err = stream.Recv()
		require.NoError(t, err)
	}
	require.NoError(t, stream.CloseSend())
	_, err = stream.Recv()
	require.ErrorIs(t, err, io.EOF, "the server ends the stream cleanly")
	return first
}

func TestRun_badSettings(t *testing.T) {
	err := run(t.Context(), []string{"--heartbeat", "1m"}, env{}.get, io.Discard)
	var usage usageError
	require.True(t, errors.As(err, &usage), "want a usageError, got %v", err)
}

func TestRun_addressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	err = run(t.Context(), []string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", l.Addr().String()}, env{}.get, io.Discard)
	require.ErrorContains(t, err, "admin listener")
	var usage usageError
	require.False(t, errors.As(err, &usage), "a busy port is not a usage error")
}

// runInBackground runs idemproxy's run with args until cancel is called
// or the test ends, and returns its log and where its result arrives. A
// test that reads the result itself puts one back, for the cleanup.
func runInBackground(t *testing.T, getenv func(string) string, args ...string) (*testenv.Buffer, chan error, context.CancelFunc) {
	t.Helper()
	logs := &testenv.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, getenv, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("run did not return")
		}
	})
	return logs, done, cancel
}

// logAddr waits for the JSON log line msg and returns its addr field.
func logAddr(t *testing.T, logs *testenv.Buffer, done chan error, msg string) string {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		if addr := testenv.FindLogAddr(logs.String(), msg); addr != "" {
			return addr
		}
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("run returned %v before logging %q; logs:\n%s", err, msg, logs.String())
		case <-time.After(poll):
		}
	}
	t.Fatalf("no %q log line; logs:\n%s", msg, logs.String())
	return ""
}

// TestRun_warnsOfUnreplicatedWrites: where Redis replicates, saying
// --redis-min-replicas 0 is allowed but logged at start as what it is; the
// default (1 there) and standalone say nothing.
func TestRun_warnsOfUnreplicatedWrites(t *testing.T) {
	const warning = "MAY RUN TWICE"
	// Nothing listens at the sentinel address: the start-up logs do not
	// depend on Redis answering.
	sentinel := []string{"--redis-mode", "sentinel", "--redis-url", "redis://127.0.0.1:1?master_name=mymaster"}
	for name, c := range map[string]struct {
		args []string
		warn bool
	}{
		"sentinel, 0 said":        {append([]string{"--redis-min-replicas", "0"}, sentinel...), true},
		"sentinel, the default":   {sentinel, false},
		"standalone, the default": {[]string{"--redis-url", "redis://127.0.0.1:1"}, false},
	} {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, c.args...)
			logs, done, _ := runInBackground(t, env{}.get, args...)
			logAddr(t, logs, done, "admin listening")
			if c.warn {
				require.Contains(t, logs.String(), warning)
			} else {
				require.NotContains(t, logs.String(), warning)
			}
		})
	}
}

// TestRun_stopRightAtStart: a shutdown that comes before the servers have
// begun to serve (SIGTERM just after start) is a clean stop, not an error
// (CI saw "grpc server: grpc: the server has been stopped" and exit 1).
func TestRun_stopRightAtStart(t *testing.T) {
	for i := range 20 {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		logs := &testenv.Buffer{}
		err := run(ctx, []string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--redis-url", "redis://127.0.0.1:1"}, env{}.get, logs)
		require.NoError(t, err, "run %d; logs:\n%s", i, logs.String())
	}
}
