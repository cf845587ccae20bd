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

func TestNullProcessor_Process(t *testing.T) {
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

	headers := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{}}
	body := &extprocv3.HttpBody{Body: []byte(chargeBody), EndOfStream: true}
	trailers := &extprocv3.HttpTrailers{}
	for _, tc := range []struct {
		req  *extprocv3.ProcessingRequest
		want func(*extprocv3.ProcessingResponse) bool
	}{
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: headers}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetRequestHeaders() != nil }},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: body}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetRequestBody() != nil }},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: trailers}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetRequestTrailers() != nil }},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: headers}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseHeaders() != nil }},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: body}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseBody() != nil }},
		{&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: trailers}},
			func(r *extprocv3.ProcessingResponse) bool { return r.GetResponseTrailers() != nil }},
	} {
		require.NoError(t, stream.Send(tc.req))
		resp, err := stream.Recv()
		require.NoError(t, err)
		require.True(t, tc.want(resp), "reply %v to %T", resp, tc.req.GetRequest())
		// CONTINUE, nothing changed: the empty common response.
		require.Nil(t, resp.GetImmediateResponse())
		require.Nil(t, resp.GetModeOverride())
	}
	require.NoError(t, stream.CloseSend())
	_, err = stream.Recv()
	require.ErrorIs(t, err, io.EOF)

	cancel()
	require.NoError(t, testenv.Receive(t, served, 10*time.Second, "the null server to stop"))
}
