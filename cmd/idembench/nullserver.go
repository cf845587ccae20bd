package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// nullServerCommand is the hidden first argument that turns idembench into
// the null ext_proc server (scenario b).
const nullServerCommand = "null-server"

// runNullServer serves the null processor on --addr until ctx ends.
func runNullServer(ctx context.Context, args []string, stderr io.Writer) error {
	return serveExtProc(ctx, nullServerCommand, args, stderr, func() (extprocv3.ExternalProcessorServer, error) {
		return newNullProcessor(), nil
	})
}

// serveExtProc is the main of idembench's own ext_proc servers (null-server,
// memory-server): --addr, the processor newProc builds, served until ctx
// ends, with idemproxy's message size limit (Envoy's 1 MiB buffered bodies
// fit) and opts.
func serveExtProc(ctx context.Context, name string, args []string, stderr io.Writer,
	newProc func() (extprocv3.ExternalProcessorServer, error), opts ...grpc.ServerOption) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "gRPC listen address")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	proc, err := newProc()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(16 << 20)}, opts...)...)
	extprocv3.RegisterExternalProcessorServer(gs, proc)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		gs.Stop()
	}()
	err = gs.Serve(lis)
	<-stopped
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// nullProcessor answers every ext_proc message with the empty response of
// the matching kind, which means CONTINUE, unchanged. It touches no Redis
// and keeps no state: the cost of the protocol itself, the floor under any
// ext_proc server. Envoy sends it exactly what it sends idemproxy, because
// the filter config (processing mode included) is the same.
type nullProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
	// The replies never change, so they are built once and only read.
	reqHeaders, reqBody, reqTrailers    *extprocv3.ProcessingResponse
	respHeaders, respBody, respTrailers *extprocv3.ProcessingResponse
}

func newNullProcessor() *nullProcessor {
	return &nullProcessor{
		reqHeaders: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
			RequestHeaders: &extprocv3.HeadersResponse{}}},
		reqBody: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: &extprocv3.BodyResponse{}}},
		reqTrailers: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{}}},
		respHeaders: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{}}},
		respBody: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: &extprocv3.BodyResponse{}}},
		respTrailers: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{}}},
	}
}

// Process is the whole server: receive, reply in kind, repeat.
func (n *nullProcessor) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := n.reply(req)
		if resp == nil {
			return status.Errorf(codes.InvalidArgument, "unexpected message %T", req.GetRequest())
		}
		if err := stream.Send(resp); err != nil {
			return nil // Envoy went away; nothing to clean up
		}
	}
}

func (n *nullProcessor) reply(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return n.reqHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		return n.reqBody
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return n.reqTrailers
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return n.respHeaders
	case *extprocv3.ProcessingRequest_ResponseBody:
		return n.respBody
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return n.respTrailers
	}
	return nil
}
