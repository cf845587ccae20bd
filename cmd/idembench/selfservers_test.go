package main

import (
	"context"
	"io"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestRunNullServer runs the null-server command: it serves on --addr,
// answers in kind (internal/nullproc's tests cover every kind) and stops
// cleanly when its context ends.
func TestRunNullServer(t *testing.T) {
	addr, err := testenv.FreeAddr()
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- runNullServer(ctx, []string{"--addr", addr}, io.Discard) }()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	sctx, scancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer scancel()
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(sctx, grpc.WaitForReady(true))
	require.NoError(t, err)

	require.NoError(t, stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{}}}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.NotNil(t, resp.GetRequestHeaders())
	require.NoError(t, stream.CloseSend())
	_, err = stream.Recv()
	require.ErrorIs(t, err, io.EOF)

	cancel()
	require.NoError(t, testenv.Receive(t, served, 10*time.Second, "the null server to stop"))
}
