package envoy

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// gRPC unary calls through the shipped envoy.yaml's gRPC routes, real
// Envoy, idemproxy and Redis, with grpc-go's interop TestService behind
// them and a grpc-go client in front (docs/grpc.md).

// grpcBackendPort is the envoy.yaml edit that points the grpc-backend
// cluster at addr.
func grpcBackendPort(t *testing.T, addr string) [2]string {
	t.Helper()
	port, err := testenv.PortOf(addr)
	require.NoError(t, err)
	return [2]string{"port_value: 8090 }", "port_value: " + port + " }"}
}

// grpcRouteMetadata is the envoy.yaml edit that adds per-route metadata
// entries (YAML list lines) to the keyed gRPC routes.
func grpcRouteMetadata(entries string) [2]string {
	const block = "typed_per_filter_config: &grpc_never_sent\n" +
		"                  envoy.filters.http.ext_proc:\n" +
		"                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute\n" +
		"                    overrides:\n" +
		"                      grpc_initial_metadata:\n"
	return [2]string{block, block + entries}
}

// startGRPCStack starts the stack with the gRPC service behind Envoy.
func startGRPCStack(t *testing.T, edits ...[2]string) (*stack, *grpcService, testgrpc.TestServiceClient) {
	t.Helper()
	svc, addr := startGRPCService(t)
	s := startStackWith(t, stackConfig{envoyEdits: append([][2]string{grpcBackendPort(t, addr)}, edits...)})
	return s, svc, grpcClient(t, s.url)
}

// TestGRPC_UnaryOnce: a keyed UnaryCall runs once; a duplicate while it
// runs gets UNAVAILABLE with a pushback, one with another message
// FAILED_PRECONDITION fingerprint-mismatch; the first gets its answer and
// trailers; a retry after it completed gets FAILED_PRECONDITION
// response-not-stored (until replays through the upstream path exist).
func TestGRPC_UnaryOnce(t *testing.T) {
	s, svc, c := startGRPCStack(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	first := make(chan grpcResult, 1)
	go func() { first <- unary(ctx, c, "g-once", "hold") }()
	testenv.WaitFor(t, 10*time.Second, "the first call runs", func() bool { return svc.executions("g-once") == 1 })

	dup := unary(ctx, c, "g-once", "hold")
	require.Equal(t, codes.Unavailable, dup.code(), dup.st.Message())
	require.Equal(t, "urn:idemproxy:problem:in-progress", dup.problem())
	require.Contains(t, dup.st.Message(), "urn:idemproxy:problem:in-progress: The first request with this idempotency key is still running")
	pushback := dup.trailers.Get("grpc-retry-pushback-ms")
	require.Len(t, pushback, 1, "grpc-go's retry reads exactly one pushback: %v", dup.trailers)
	ms, err := strconv.Atoi(pushback[0])
	require.NoError(t, err)
	require.GreaterOrEqual(t, ms, 100)
	t.Logf("in-progress duplicate: %v, pushback %d ms", dup.st, ms)

	wire := rawGRPC(t, s.url, "g-once", "hold")
	require.Equal(t, 200, wire.StatusCode, "a trailers-only gRPC answer travels in a 200")
	require.Equal(t, "application/grpc", wire.Header.Get("Content-Type"))
	require.Equal(t, "14", wire.Header.Get("Grpc-Status"))
	require.Equal(t, "urn:idemproxy:problem:in-progress", wire.Header.Get("Idempotency-Problem"))
	require.NotEmpty(t, wire.Header.Get("Grpc-Retry-Pushback-Ms"))
	t.Logf("on the wire: %d %v", wire.StatusCode, wire.Header)

	other := unary(ctx, c, "g-once", "another message")
	require.Equal(t, codes.FailedPrecondition, other.code(), other.st.Message())
	require.Equal(t, "urn:idemproxy:problem:fingerprint-mismatch", other.problem())
	require.Empty(t, other.trailers.Get("grpc-retry-pushback-ms"))

	close(svc.release)
	got := testenv.Receive(t, first, 10*time.Second, "the first call's answer")
	require.Equal(t, codes.OK, got.code(), got.st.Message())
	require.Equal(t, "charged:hold", string(got.resp.GetPayload().GetBody()))
	require.Equal(t, []string{"ch_g-once"}, got.trailers.Get("charge-id"))

	retry := unary(ctx, c, "g-once", "hold")
	require.Equal(t, codes.FailedPrecondition, retry.code(), retry.st.Message())
	require.Equal(t, "urn:idemproxy:problem:response-not-stored", retry.problem())
	t.Logf("retry of the completed call: %v", retry.st)
	require.Equal(t, 1, svc.executions("g-once"), "ran once through every duplicate and retry")

	ok := unary(ctx, c, "g-other", "x")
	require.Equal(t, codes.OK, ok.code(), "another key runs")
	require.Equal(t, 1, svc.executions("g-other"))
}

// rawGRPC sends one keyed UnaryCall over plain HTTP/2 and returns the
// response as it arrived, to see the HTTP form of a gRPC answer.
func rawGRPC(t *testing.T, url, key, payload string) *http.Response {
	t.Helper()
	msg, err := proto.Marshal(&testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(payload)}})
	require.NoError(t, err)
	frame := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/grpc.testing.TestService/UnaryCall", bytes.NewReader(append(frame, msg...)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Idempotency-Key", key)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge, as gRPC clients speak it
	h2c := &http.Transport{Protocols: &protocols}
	defer h2c.CloseIdleConnections()
	resp, err := h2c.RoundTrip(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Empty(t, body, "trailers-only: no message")
	return resp
}

// TestGRPC_OutcomeUnknown: a call whose server never answers is cut by the
// route timeout, or by the client's deadline; it may have run, so its retry
// is refused with FAILED_PRECONDITION outcome-unknown and does not run
// again.
func TestGRPC_OutcomeUnknown(t *testing.T) {
	_, svc, c := startGRPCStack(t, [2]string{"cluster: grpc-backend\n                  timeout: 60s", "cluster: grpc-backend\n                  timeout: 1s"})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cut := unary(ctx, c, "g-unknown", "never")
	require.NotEqual(t, codes.OK, cut.code())
	t.Logf("the cut call: %v", cut.st)
	retry := unary(ctx, c, "g-unknown", "never")
	require.Equal(t, codes.FailedPrecondition, retry.code(), retry.st.Message())
	require.Equal(t, "urn:idemproxy:problem:outcome-unknown", retry.problem())
	require.Equal(t, 1, svc.executions("g-unknown"))

	// The client's own deadline cuts a call the same way.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond) // before the route's 1 s
	defer cancelShort()
	gone := unary(short, c, "g-deadline", "never")
	require.Equal(t, codes.DeadlineExceeded, gone.code(), gone.st.Message())
	retry = unary(ctx, c, "g-deadline", "never")
	require.Equal(t, codes.FailedPrecondition, retry.code(), retry.st.Message())
	require.Equal(t, "urn:idemproxy:problem:outcome-unknown", retry.problem())
	require.Equal(t, 1, svc.executions("g-deadline"))
}

// TestGRPC_WaitingDuplicate: on a gRPC route with x-idemproxy-in-progress:
// wait, a duplicate is held until the first call completes. Its answer is
// then what a retry of a completed call gets today: FAILED_PRECONDITION
// response-not-stored (the replay needs the upstream replay path). It
// never runs the call again.
func TestGRPC_WaitingDuplicate(t *testing.T) {
	s, svc, c := startGRPCStack(t, grpcRouteMetadata(
		"                      - { key: x-idemproxy-in-progress, value: wait }\n"+
			"                      - { key: x-idemproxy-max-wait, value: 25s }\n"))
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	first := make(chan grpcResult, 1)
	go func() { first <- unary(ctx, c, "g-wait", "hold") }()
	testenv.WaitFor(t, 10*time.Second, "the first call runs", func() bool { return svc.executions("g-wait") == 1 })
	dup := make(chan grpcResult, 1)
	go func() { dup <- unary(ctx, c, "g-wait", "hold") }()
	testenv.WaitFor(t, 10*time.Second, "the duplicate waits", func() bool { return s.metric(t, "idemproxy_waiters") == 1 })

	close(svc.release)
	got := testenv.Receive(t, first, 10*time.Second, "the first call's answer")
	require.Equal(t, codes.OK, got.code(), got.st.Message())
	waited := testenv.Receive(t, dup, 10*time.Second, "the waiting duplicate's answer")
	require.Equal(t, codes.FailedPrecondition, waited.code(), waited.st.Message())
	require.Equal(t, "urn:idemproxy:problem:response-not-stored", waited.problem())
	require.Equal(t, 1, svc.executions("g-wait"))
}

// TestGRPC_Streaming: keyed streaming calls are refused at once by the
// shipped routes (docs/grpc.md, unary only): the keyed gRPC routes list
// the unary methods, and any other keyed call gets FAILED_PRECONDITION
// streaming-unsupported from Envoy, nothing run. The weaker route (keyed
// calls to every method, the shape of the config before the list) shows
// what the list prevents: Envoy holds a bidi call that waits for an
// answer before half-closing (BUFFERED) until its deadline.
func TestGRPC_Streaming(t *testing.T) {
	t.Run("shipped routes refuse at once", func(t *testing.T) {
		_, svc, c := startGRPCStack(t)
		for _, header := range []string{"idempotency-key", "x-idempotency-key"} {
			ctx := metadata.AppendToOutgoingContext(t.Context(), header, "g-bidi-"+header)
			bidiCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
			bidi, err := c.FullDuplexCall(bidiCtx)
			require.NoError(t, err)
			// The refusal may end the stream before the message is sent.
			_ = bidi.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte("hi")}})
			_, err = bidi.Recv()
			cancel()
			st := status.Convert(err)
			require.Equal(t, codes.FailedPrecondition, st.Code(), "%s: %v", header, err)
			require.True(t, strings.HasPrefix(st.Message(), "urn:idemproxy:problem:streaming-unsupported: "), st.Message())
			require.Equal(t, []string{"urn:idemproxy:problem:streaming-unsupported"}, bidi.Trailer().Get("idempotency-problem"))
			require.Zero(t, svc.executions("g-bidi-"+header), "a refused call never reaches the server")
		}
		in := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "g-in")
		st, err := c.StreamingInputCall(in)
		require.NoError(t, err)
		_ = st.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: []byte("ab")}})
		_, err = st.CloseAndRecv()
		require.Equal(t, codes.FailedPrecondition, status.Code(err), "a client stream is not a listed unary method: %v", err)
		require.Zero(t, svc.executions("g-in"))

		// Keyless streaming calls pass through; listed unary methods are keyed.
		bidi, err := c.FullDuplexCall(t.Context())
		require.NoError(t, err)
		require.NoError(t, bidi.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte("hi")}}))
		resp, err := bidi.Recv()
		require.NoError(t, err, "a keyless bidi call is not idemproxy's")
		require.Equal(t, "hi", string(resp.GetPayload().GetBody()), "echoed while the call is open")
		require.NoError(t, bidi.CloseSend())
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		require.Equal(t, codes.OK, unary(ctx, c, "g-unary", "x").code())
		require.Equal(t, 1, svc.executions("g-unary"))
	})
	t.Run("weaker: keyed calls to every method hang", func(t *testing.T) {
		_, svc, c := startGRPCStack(t, [2]string{
			"safe_regex: &grpc_unary_methods\n                    regex: '/grpc\\.testing\\.TestService/(UnaryCall|EmptyCall)'",
			"safe_regex: &grpc_unary_methods\n                    regex: '/.*'"})
		ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "g-bidi")
		bidiCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		bidi, err := c.FullDuplexCall(bidiCtx)
		require.NoError(t, err)
		require.NoError(t, bidi.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte("hi")}}))
		_, err = bidi.Recv()
		require.Equal(t, codes.DeadlineExceeded, status.Code(err), "held until the deadline: %v", err)
		require.Zero(t, svc.executions("g-bidi"), "a held bidi call never reaches the server")
	})
}

// TestGRPC_ErrorStatusRetry: a call that failed with a gRPC status (a
// trailers-only response: its headers end the stream) is stored like any
// response without a body, and its retry is replayed from the record by
// today's immediate-response path: same code, message and trailing
// metadata, marked Idempotent-Replayed. (A call that succeeded ends with
// trailers after its message, which that path cannot replay: TestGRPC_UnaryOnce.)
func TestGRPC_ErrorStatusRetry(t *testing.T) {
	_, svc, c := startGRPCStack(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	first := unary(ctx, c, "g-decline", "decline")
	retry := unary(ctx, c, "g-decline", "decline")
	for _, r := range []grpcResult{first, retry} {
		require.Equal(t, codes.FailedPrecondition, r.code())
		require.Equal(t, "card declined: 100% sure", r.st.Message())
		require.Equal(t, []string{"insufficient_funds"}, r.trailers.Get("decline-code"))
	}
	require.Empty(t, first.trailers.Get("idempotent-replayed"))
	require.Equal(t, []string{"true"}, retry.trailers.Get("idempotent-replayed"))
	require.Equal(t, 1, svc.executions("g-decline"))
}

// TestGRPC_ProxyUnavailable: with idemproxy gone, the shipped config's
// reply (503 proxy-unavailable) reaches a gRPC client as Envoy's gRPC form
// of a 503: UNAVAILABLE, which retry policies retry, and nothing ran.
func TestGRPC_ProxyUnavailable(t *testing.T) {
	s, svc, c := startGRPCStack(t)
	s.idemproxy.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r := unary(ctx, c, "g-down", "x")
	require.Equal(t, codes.Unavailable, r.code(), r.st.Message())
	require.Contains(t, r.st.Message(), "urn:idemproxy:problem:proxy-unavailable")
	t.Logf("idemproxy gone: %v", r.st)
	require.Zero(t, svc.executions("g-down"))
}

// TestGRPC_RetryPolicy: grpc-go's own retry policy (UNAVAILABLE retryable)
// retries an in-progress duplicate on its pushback and stops at the
// FAILED_PRECONDITION its retry gets once the first call completed: the
// codes do what docs/grpc.md says to a real client's retries.
func TestGRPC_RetryPolicy(t *testing.T) {
	s, svc, c := startGRPCStack(t)
	const config = `{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}], "retryPolicy": {
		"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
		"retryableStatusCodes": ["UNAVAILABLE"]}}]}`
	conn, err := grpc.NewClient(strings.TrimPrefix(s.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(config))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	retrying := testgrpc.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	first := make(chan grpcResult, 1)
	go func() { first <- unary(ctx, c, "g-policy", "hold") }()
	testenv.WaitFor(t, 10*time.Second, "the first call runs", func() bool { return svc.executions("g-policy") == 1 })
	dup := make(chan grpcResult, 1)
	go func() { dup <- unary(ctx, retrying, "g-policy", "hold") }()
	conflicts := `idemproxy_requests_total{outcome="in_progress_conflict"}`
	testenv.WaitFor(t, 10*time.Second, "the policy retries UNAVAILABLE", func() bool { return s.metric(t, conflicts) >= 2 })
	close(svc.release)
	require.Equal(t, codes.OK, testenv.Receive(t, first, 10*time.Second, "the first call").code())
	got := testenv.Receive(t, dup, 20*time.Second, "the retried duplicate")
	require.Equal(t, codes.FailedPrecondition, got.code(), "FAILED_PRECONDITION ends the retries: %v", got.st)
	require.Equal(t, "urn:idemproxy:problem:response-not-stored", got.problem())
	require.Equal(t, 1, svc.executions("g-policy"))
	t.Logf("in-progress answers before the policy stopped: %v", s.metric(t, conflicts))
}
