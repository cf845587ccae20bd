package deploy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// recordingProcessor is a stand-in for idemproxy: an ext_proc server that
// lets everything through unchanged and records, per stream, which messages
// Envoy sent. That shows which requests reach the processor and whether the
// processing mode is the one idemproxy needs (one buffered request body,
// response headers with their attributes, a streamed response body).
type recordingProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
	mu       sync.Mutex
	streams  [][]string
	metadata []metadata.MD // each stream's gRPC metadata
}

var _ extprocv3.ExternalProcessorServer = (*recordingProcessor)(nil)

// startProcessor serves a recordingProcessor on a free loopback port and
// returns it with its port and a function that stops it early.
func startProcessor(t *testing.T) (*recordingProcessor, int, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &recordingProcessor{}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, p)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			gs.Stop()
			testenv.Receive(t, done, 10*time.Second, "the processor's server to stop")
		})
	}
	t.Cleanup(stop)
	return p, ln.Addr().(*net.TCPAddr).Port, stop
}

// Process answers every message with "continue unchanged".
func (p *recordingProcessor) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	p.mu.Lock()
	idx := len(p.streams)
	p.streams = append(p.streams, nil)
	md, _ := metadata.FromIncomingContext(stream.Context())
	p.metadata = append(p.metadata, md)
	p.mu.Unlock()
	record := func(event string) {
		p.mu.Lock()
		p.streams[idx] = append(p.streams[idx], event)
		p.mu.Unlock()
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &extprocv3.ProcessingResponse{}
		switch r := req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			record(fmt.Sprintf("request_headers end_of_stream=%t", r.RequestHeaders.EndOfStream))
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_RequestBody:
			record(fmt.Sprintf("request_body %q end_of_stream=%t", r.RequestBody.Body, r.RequestBody.EndOfStream))
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			record("response_headers attributes=" + attributeNames(req))
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			if len(r.ResponseBody.Body) > 0 {
				record(fmt.Sprintf("response_body %q", r.ResponseBody.Body))
			}
			if r.ResponseBody.EndOfStream {
				record("response_body end_of_stream")
			}
			resp.Response = &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}
		default:
			record(fmt.Sprintf("unexpected %T", r))
			return status.Errorf(codes.InvalidArgument, "unexpected %T", r)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// attributeNames lists the attributes Envoy attached, sorted, with values.
func attributeNames(req *extprocv3.ProcessingRequest) string {
	var names []string
	for _, s := range req.Attributes {
		for k, v := range s.GetFields() {
			names = append(names, k+"="+v.GetStringValue())
		}
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}

// recorded returns a copy of what each stream saw so far.
func (p *recordingProcessor) recorded() [][]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([][]string, len(p.streams))
	for i, s := range p.streams {
		out[i] = append([]string(nil), s...)
	}
	return out
}

// streamMetadata returns the gRPC metadata stream i arrived with.
func (p *recordingProcessor) streamMetadata(i int) metadata.MD {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.metadata[i].Copy()
}
