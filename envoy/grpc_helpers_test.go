package envoy

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcService is the gRPC backend of the gRPC tests: grpc-go's interop
// TestService, counting executions per idempotency key. A UnaryCall's
// payload steers it: "hold" blocks until release is closed, "never"
// blocks until the call is cut, "decline" fails with a gRPC status (a
// trailers-only response); anything else is charged at once, with
// the trailer charge-id.
type grpcService struct {
	testgrpc.UnimplementedTestServiceServer
	release chan struct{}

	mu   sync.Mutex
	runs map[string]int
}

// startGRPCService serves a grpcService on a free loopback port.
func startGRPCService(t *testing.T) (*grpcService, string) {
	t.Helper()
	svc := &grpcService{release: make(chan struct{}), runs: map[string]int{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return svc, lis.Addr().String()
}

// ran counts one execution of the call's key.
func (g *grpcService) ran(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	key := strings.Join(append(md.Get("idempotency-key"), md.Get("x-idempotency-key")...), ",")
	g.mu.Lock()
	defer g.mu.Unlock()
	g.runs[key]++
}

// executions is how often key ran.
func (g *grpcService) executions(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.runs[key]
}

func (g *grpcService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	g.ran(ctx)
	body := req.GetPayload().GetBody()
	switch string(body) {
	case "hold":
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	case "never":
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	case "decline":
		// A gRPC error: a trailers-only response.
		if err := grpc.SetTrailer(ctx, metadata.Pairs("decline-code", "insufficient_funds")); err != nil {
			return nil, err
		}
		return nil, status.Error(codes.FailedPrecondition, "card declined: 100% sure")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if err := grpc.SetTrailer(ctx, metadata.Pairs("charge-id", "ch_"+strings.Join(md.Get("idempotency-key"), ""))); err != nil {
		return nil, err
	}
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: append([]byte("charged:"), body...)}}, nil
}

// StreamingInputCall (client streaming) sums the sizes of all messages.
func (g *grpcService) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	g.ran(stream.Context())
	total := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(req.GetPayload().GetBody())
	}
}

// FullDuplexCall (bidi) echoes each message at once.
func (g *grpcService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	g.ran(stream.Context())
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// grpcClient dials Envoy's listener (an http:// base URL) over h2c.
func grpcClient(t *testing.T, url string) testgrpc.TestServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// grpcResult is one unary call's outcome: its response, status and the
// header and trailer metadata (a trailers-only answer fills both).
type grpcResult struct {
	resp             *testgrpc.SimpleResponse
	st               *status.Status
	header, trailers metadata.MD
}

func (r grpcResult) code() codes.Code { return r.st.Code() }

// problem is the Idempotency-Problem metadata of a refusal.
func (r grpcResult) problem() string { return strings.Join(r.trailers.Get("idempotency-problem"), ",") }

// unary makes one UnaryCall with payload under key (metadata
// idempotency-key); safe on any goroutine.
func unary(ctx context.Context, c testgrpc.TestServiceClient, key, payload string) grpcResult {
	var r grpcResult
	ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
	resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(payload)}},
		grpc.Header(&r.header), grpc.Trailer(&r.trailers))
	r.resp, r.st = resp, status.Convert(err)
	return r
}
