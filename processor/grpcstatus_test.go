package processor

import (
	"strconv"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
)

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "application/grpc+json": true,
		"application/grpc;charset=utf-8": true, "Application/GRPC": true,
		"application/grpc-web": false, "application/grpc-web+proto": false, "application/json": false, "": false,
	} {
		require.Equal(t, want, isGRPC(ct), ct)
	}
}

// requireGRPC checks a trailers-only gRPC refusal and returns its headers.
func requireGRPC(t *testing.T, resp *extprocv3.ProcessingResponse, code codes.Code, slug string) map[string]string {
	t.Helper()
	ir, hs := immediateOf(t, resp)
	require.EqualValues(t, 200, ir.GetStatus().GetCode(), "gRPC answers travel in a 200")
	require.Equal(t, uint32(code), ir.GetGrpcStatus().GetStatus())
	require.Empty(t, ir.GetBody(), "trailers-only: no message")
	m := map[string]string{}
	for _, h := range hs {
		m[h.Name] = h.Value
	}
	require.Equal(t, "application/grpc", m["content-type"])
	require.Equal(t, strconv.Itoa(int(code)), m["grpc-status"])
	require.Equal(t, problemBase+slug, m[problemHeader])
	require.Contains(t, m["grpc-message"], problemBase+slug+": ")
	require.Equal(t, "idemproxy_"+slug, ir.GetDetails())
	return m
}

func TestGRPCReply_everyProblemHasACode(t *testing.T) {
	require.Len(t, grpcCodes, len(allProblemTypes))
	want := map[string]codes.Code{
		"in-progress": codes.Unavailable, "store-unavailable": codes.Unavailable,
		"fingerprint-mismatch": codes.FailedPrecondition, "outcome-unknown": codes.FailedPrecondition,
		"response-not-stored": codes.FailedPrecondition, "store-reset": codes.FailedPrecondition,
		"invalid-key": codes.InvalidArgument, "key-required": codes.InvalidArgument,
		"headers-too-large": codes.ResourceExhausted, "identity-required": codes.Unauthenticated,
		"misconfigured": codes.Internal,
	}
	for _, p := range allProblemTypes {
		// The gRPC form wins over every --error-format.
		for _, s := range []shape{{grpc: true}, {grpc: true, format: ErrorFormatStripe}} {
			m := requireGRPC(t, problemReply(refused{p: p, detail: "d", retryAfter: "2"}, s), want[p.slug], p.slug)
			if want[p.slug] == codes.Unavailable {
				require.Equal(t, "2000", m[pushbackHeader], p.slug)
			} else {
				require.NotContains(t, m, pushbackHeader, "no pushback on a code no policy retries: %s", p.slug)
			}
		}
	}
}

func TestGRPCReply_pushback(t *testing.T) {
	for _, tc := range []struct {
		wait       time.Duration
		retryAfter string
		want       int64
	}{
		{1234 * time.Millisecond, "2", 1234},
		{time.Millisecond, "1", minPushback.Milliseconds()},
		{0, "3", 3000},
		{0, "", 0},
	} {
		require.Equal(t, tc.want, refused{wait: tc.wait, retryAfter: tc.retryAfter}.pushbackMillis(), "%v %q", tc.wait, tc.retryAfter)
	}
}

func TestGRPCPercentEncode(t *testing.T) {
	require.Equal(t, "a b%25c%0A%C3%A9~", grpcPercentEncode("a b%c\né~"))
}

// grpcKeyed is a keyed unary gRPC call's request headers.
func grpcKeyed(key string) *extprocv3.ProcessingRequest {
	return reqHeaders(false, ":method", "POST", ":path", "/grpc.testing.TestService/UnaryCall", ":authority", testAuthority,
		":scheme", "http", "content-type", "application/grpc", "te", "trailers", "idempotency-key", key)
}

func TestServer_Process_grpcInProgress(t *testing.T) {
	store := newFakeStore()
	fp := fingerprint("POST", "/grpc.testing.TestService/UnaryCall", []byte("\x00\x00\x00\x00\x01x"))
	store.seedRunning(storeKey([]string{testAuthority}, "k"), fp, 1500*time.Millisecond, 25*time.Second)
	srv, _ := newTestServer(t, store, nil)
	srv.durations.observe(routeOf(testAuthority, "/grpc.testing.TestService/UnaryCall"), 2*time.Second)
	out, err := run(t, srv, endEOF, grpcKeyed("k"), reqBody("\x00\x00\x00\x00\x01x", true))
	require.NoError(t, err)
	require.Len(t, out, 2)
	m := requireGRPC(t, out[1], codes.Unavailable, "in-progress")
	require.Equal(t, "500", m[pushbackHeader], "the estimate to the millisecond: typical 2 s less 1.5 s run")
	require.Empty(t, m["retry-after"])
}

func TestServer_Process_grpcInvalidKey(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	out, err := run(t, srv, endEOF, reqHeaders(false, ":method", "POST", ":path", "/s/M", ":authority", testAuthority,
		"content-type", "application/grpc+proto", "idempotency-key", "a b"))
	require.NoError(t, err)
	requireGRPC(t, out[0], codes.InvalidArgument, "invalid-key")
}

func TestServer_Process_httpKeepsItsShape(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	out, err := run(t, srv, endEOF, reqHeaders(false, ":method", "POST", ":path", "/s/M", ":authority", testAuthority,
		"content-type", "application/grpc-web", "idempotency-key", "a b"))
	require.NoError(t, err)
	requireProblem(t, out[0], 400, "invalid-key")
}

func TestServer_Process_grpcShadowLogsTheCode(t *testing.T) {
	store := newFakeStore()
	fp := fingerprint("POST", "/grpc.testing.TestService/UnaryCall", []byte("m"))
	store.seedRunning(storeKey([]string{testAuthority}, "k"), fp, time.Second, 25*time.Second)
	srv, _, logs := newLoggedServer(t, store, func(c *Config) { c.Mode = ModeShadow })
	out, err := run(t, srv, endEOF, grpcKeyed("k"), reqBody("m", true))
	require.NoError(t, err)
	require.NotNil(t, out[1].GetRequestBody(), "shadow: passed upstream")
	require.Contains(t, logs.String(), "grpc_status=Unavailable", "the code it would have been, not only the 200 it travels in")
}
