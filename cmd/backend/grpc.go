package main

// The gRPC side of the mock payment service: grpc-go's interop TestService,
// whose UnaryCall charges once per call and counts the execution under the
// call's idempotency-key metadata in the same counters as the HTTP
// endpoints (/stats), so the demo and the tests can show that a keyed gRPC
// call ran once. Server reflection is on, for grpcurl.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
)

// grpcCharges is the TestService of the backend.
type grpcCharges struct {
	testgrpc.UnimplementedTestServiceServer
	b *backend
}

// UnaryCall charges: it counts one execution of the call's key and answers
// with a charge id in the message and in the trailer charge-id.
func (g grpcCharges) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	h := http.Header{}
	for _, name := range []string{"idempotency-key", "x-idempotency-key"} {
		for _, v := range md.Get(name) {
			h.Add(name, v)
		}
	}
	key := idempotencyKey(h)
	g.b.record(key, 0)
	id := fmt.Sprintf("ch_grpc_%d", g.b.executions(key))
	_ = grpc.SetTrailer(ctx, metadata.Pairs("charge-id", id))
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: append([]byte(id+": "), req.GetPayload().GetBody()...)}}, nil
}

// serveGRPC serves the TestService on ln until ctx ends, then stops it
// gracefully.
func serveGRPC(ctx context.Context, ln net.Listener, b *backend, log *slog.Logger) error {
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, grpcCharges{b: b})
	reflection.Register(srv)
	log.Info("grpc listening", slog.String("addr", ln.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("backend: grpc serve: %w", err)
	case <-ctx.Done():
	}
	srv.GracefulStop()
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("backend: grpc serve: %w", err)
	}
	return nil
}
