package envoy

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestEndToEnd_ReplayEndpointGRPC: a unary gRPC call with an
// idempotency-key (grpc-go client and server, the health service as the
// upstream) runs once; its retry is served by the replay endpoint, and the
// grpc-go client reads the replayed message and its trailers (grpc-status,
// trailing metadata) as it read the first.
func TestEndToEnd_ReplayEndpointGRPC(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		calls.Add(1)
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-charge-checksum", "sha256:grpc"))
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	envoyBin := testenv.EnvoyBin(t)
	s := startSharedWith(t)
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), "127.0.0.1:0", "debug", "--replay-addr", "127.0.0.1:0")
	replayAddr := s.idemproxy.LogAddr(t, "replay endpoint listening")
	// The shipped gRPC routes send it to the grpc-backend cluster.
	s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: ln.Addr().String(), Replay: replayAddr,
		Edits: [][2]string{grpcBackendPort(t, ln.Addr().String())}}, 4)

	conn, err := grpc.NewClient(s.url[len("http://"):], grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	client := healthpb.NewHealthClient(conn)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", newKey(t))
	call := func() (*healthpb.HealthCheckResponse, metadata.MD, metadata.MD) {
		var header, trailer metadata.MD
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
		require.NoError(t, err)
		return resp, header, trailer
	}
	first, _, firstTrailer := call()
	again, againHeader, againTrailer := call()
	require.EqualValues(t, 1, calls.Load(), "the call ran once")
	require.Equal(t, first.GetStatus(), again.GetStatus())
	require.Equal(t, []string{"sha256:grpc"}, firstTrailer.Get("x-charge-checksum"))
	require.Equal(t, firstTrailer.Get("x-charge-checksum"), againTrailer.Get("x-charge-checksum"))
	require.Equal(t, []string{"true"}, againHeader.Get("idempotent-replayed"))
	require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="served"}`))
	t.Logf("first %v trailer %v; retry %v header %v trailer %v", first, firstTrailer, again, againHeader, againTrailer)
}
