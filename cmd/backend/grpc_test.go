package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestRun_grpc: with --grpc-addr the backend also serves the gRPC
// TestService; a UnaryCall charges, with a charge-id trailer, and counts
// under its idempotency-key metadata in /stats beside the HTTP charges.
func TestRun_grpc(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var logs testenv.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, io.Discard, &logs)
	}()
	var addr, grpcAddr string
	require.Eventually(t, func() bool {
		addr, grpcAddr = listeningAddr(logs.String()), testenv.FindLogAddr(logs.String(), "grpc listening")
		return addr != "" && grpcAddr != ""
	}, 5*time.Second, 5*time.Millisecond, "%s", logs.String())

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	var trailer metadata.MD
	ctx2 := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "grpc-key")
	resp, err := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx2,
		&testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("charge 50")}}, grpc.Trailer(&trailer))
	require.NoError(t, err)
	require.Equal(t, "ch_grpc_1: charge 50", string(resp.GetPayload().GetBody()))
	require.Equal(t, []string{"ch_grpc_1"}, trailer.Get("charge-id"))

	r, err := http.Get("http://" + addr + "/stats")
	require.NoError(t, err)
	defer r.Body.Close()
	var s stats
	require.NoError(t, json.NewDecoder(r.Body).Decode(&s))
	require.Equal(t, 1, s.Keys["grpc-key"])

	cancel()
	require.NoError(t, testenv.Receive(t, done, shutdownTimeout+5*time.Second, "run to return"))
}
