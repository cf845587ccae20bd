package envoy

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestEndToEnd_ReplayEndpointGRPC: a unary gRPC call with an
// idempotency-key (grpc-go client, grpc-go's interop TestService as the
// upstream) runs once; its retry is served by the replay endpoint, and the
// grpc-go client reads the replayed message and its trailers (grpc-status,
// trailing metadata) as it read the first. The same with a filter config
// that skips response trailers (as Envoy Gateway 1.9's does): idemproxy
// asks for them on gRPC calls (mode_override), so the replay still works;
// where Envoy does not allow overrides, the retry gets
// response-not-stored, and the call ran once either way.
func TestEndToEnd_ReplayEndpointGRPC(t *testing.T) {
	const skip = "response_trailer_mode: SEND"
	const noOverride = "allow_mode_override: true"
	for _, c := range []struct {
		name     string
		edits    [][2]string
		replayed bool
	}{
		{"as shipped", nil, true},
		{"trailers skipped in the filter, override allowed", [][2]string{{skip, "response_trailer_mode: SKIP"}}, true},
		{"trailers skipped, no override", [][2]string{{skip, "response_trailer_mode: SKIP"}, {noOverride, "allow_mode_override: false"}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			svc, addr := startGRPCService(t)
			envoyBin := testenv.EnvoyBin(t)
			s := startSharedWith(t)
			var grpcAddr string
			s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), "127.0.0.1:0", "debug", "--replay-addr", "127.0.0.1:0")
			replayAddr := s.idemproxy.LogAddr(t, "replay endpoint listening")
			// The shipped gRPC routes send it to the grpc-backend cluster.
			s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: s.backendAddr, Replay: replayAddr,
				Edits: append([][2]string{grpcBackendPort(t, addr)}, c.edits...)}, 4)
			client := grpcClient(t, s.url)

			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			key := newKey(t)
			first := unary(ctx, client, key, "charge 50")
			// Without the trailers idemproxy learns that the call ended only
			// when Envoy closes the ext_proc stream, a moment after the
			// client has its answer: until then a retry is in progress
			// (UNAVAILABLE), which a client's retry policy retries.
			again := unary(ctx, client, key, "charge 50")
			for again.code() == codes.Unavailable && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
				again = unary(ctx, client, key, "charge 50")
			}
			require.Equal(t, codes.OK, first.code(), first.st.Message())
			require.Equal(t, 1, svc.executions(key), "the call ran once")
			require.Equal(t, "charged:charge 50", string(first.resp.GetPayload().GetBody()))
			require.Equal(t, []string{"ch_" + key}, first.trailers.Get("charge-id"))
			t.Logf("first %q trailer %v; retry %v %q header %v trailer %v", first.resp.GetPayload().GetBody(), first.trailers,
				again.code(), again.resp.GetPayload().GetBody(), again.header, again.trailers)
			if !c.replayed {
				require.Equal(t, codes.FailedPrecondition, again.code(), again.st.Message())
				require.Equal(t, "urn:idemproxy:problem:response-not-stored", again.problem())
				return
			}
			require.Equal(t, codes.OK, again.code(), again.st.Message())
			require.Equal(t, string(first.resp.GetPayload().GetBody()), string(again.resp.GetPayload().GetBody()))
			require.Equal(t, first.trailers.Get("charge-id"), again.trailers.Get("charge-id"))
			require.Equal(t, []string{"true"}, again.header.Get("idempotent-replayed"))
			require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="served"}`))
		})
	}
}
