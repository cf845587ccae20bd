// Package nullproc is the null ext_proc server: it answers every message
// with the empty response of the matching kind, which means CONTINUE,
// unchanged. It touches no store and keeps no state, so it measures the
// cost of the protocol itself, the floor under any ext_proc server:
// idembench's scenario (b) puts it where idemproxy would be, and Envoy sends
// it exactly what it sends idemproxy, because the filter config (processing
// mode included) is the same.
package nullproc

import (
	"errors"
	"io"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Server is the null ext_proc server; the zero value is not usable, New
// builds one.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	// The replies never change, so they are built once and only read.
	reqHeaders, reqBody, reqTrailers    *extprocv3.ProcessingResponse
	respHeaders, respBody, respTrailers *extprocv3.ProcessingResponse
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// New builds the server with its replies.
func New() *Server {
	return &Server{
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
func (n *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
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

func (n *Server) reply(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
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
