package envoy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// rerouteHeader is what the measuring ext_proc server sets to move a
// request to the second cluster.
const rerouteHeader = "x-reroute-test"

// rerouter is an ext_proc server that, in its reply to the request body
// (or to the headers of a request without one), sets rerouteHeader and
// asks Envoy to clear its route cache when clear is set.
type rerouter struct {
	extprocv3.UnimplementedExternalProcessorServer
	clear bool
}

func (r rerouter) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	mutate := &extprocv3.CommonResponse{ClearRouteCache: r.clear, HeaderMutation: &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: rerouteHeader, RawValue: []byte("1")}}}}}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &extprocv3.ProcessingResponse{}
		switch m := req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			h := &extprocv3.HeadersResponse{}
			if m.RequestHeaders.EndOfStream {
				h.Response = mutate
			}
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: h}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: mutate}}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}
		default:
			return fmt.Errorf("unexpected message %T", m)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// rerouteConfig is an Envoy config with the ext_proc filter at grpcAddr
// (request body BUFFERED) and two clusters: requests carrying
// rerouteHeader go to second, the others to first.
func rerouteConfig(listener, admin int, grpcAddr, first, second string) string {
	cluster := func(name, addr string, h2 bool) string {
		host, port, _ := net.SplitHostPort(addr)
		proto := ""
		if h2 {
			proto = `
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }`
		}
		return fmt.Sprintf(`
  - name: %s
    type: STATIC
    connect_timeout: 1s%s
    load_assignment:
      cluster_name: %s
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: %s, port_value: %s } } } }] }]`,
			name, proto, name, host, port)
	}
	return fmt.Sprintf(`
admin: { address: { socket_address: { address: 127.0.0.1, port_value: %d } } }
static_resources:
  listeners:
  - address: { socket_address: { address: 127.0.0.1, port_value: %d } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: reroute
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/", headers: [{ name: %s, present_match: true }] }
                route: { cluster: second }
              - match: { prefix: "/" }
                route: { cluster: first }
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: { envoy_grpc: { cluster_name: extproc } }
              processing_mode: { request_header_mode: SEND, request_body_mode: BUFFERED, response_header_mode: SKIP }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:%s%s%s
`, admin, listener, rerouteHeader, cluster("extproc", grpcAddr, true), cluster("first", first, false), cluster("second", second, false))
}

// TestEnvoyVersions_RerouteFromExtProc measures what a replay served by
// an upstream endpoint (issue 23) relies on, on whichever Envoy runs
// (ENVOY_VERSION; make test runs it on the oldest and the newest
// supported): an ext_proc reply that sets a header and clear_route_cache
// makes Envoy select the route that matches the header, both for a
// request with a BUFFERED body (the reply to the body) and for one without
// (the reply to the headers); without clear_route_cache the first route
// stays. docs/envoy-and-mesh.md, "Supported Envoy versions", keeps the
// result.
func TestEnvoyVersions_RerouteFromExtProc(t *testing.T) {
	t.Parallel()
	bin := testenv.EnvoyBin(t)
	serve := func(name string, hits *atomic.Int64) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			fmt.Fprintf(w, "%s %s", name, r.Header.Get(rerouteHeader))
		})}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		return ln.Addr().String()
	}
	for _, clear := range []bool{true, false} {
		t.Run(fmt.Sprintf("clear_route_cache %v", clear), func(t *testing.T) {
			t.Parallel()
			var first, second atomic.Int64
			firstAddr, secondAddr := serve("first", &first), serve("second", &second)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			gs := grpc.NewServer()
			extprocv3.RegisterExternalProcessorServer(gs, rerouter{clear: clear})
			go func() { _ = gs.Serve(ln) }()
			t.Cleanup(gs.Stop)
			dir := t.TempDir()
			_, listener, _ := testenv.StartEnvoyOnFreePorts(t, bin, func(l, a int) string {
				path := filepath.Join(dir, fmt.Sprintf("reroute-%d.yaml", l))
				require.NoError(t, os.WriteFile(path, []byte(rerouteConfig(l, a, ln.Addr().String(), firstAddr, secondAddr)), 0o600))
				return path
			})
			url := fmt.Sprintf("http://127.0.0.1:%d/charge", listener)
			for _, body := range []string{`{"amount":50}`, ""} {
				method := http.MethodPost
				if body == "" {
					method = http.MethodGet
				}
				req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
				require.NoError(t, err)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				require.NoError(t, err)
				want := "first 1" // the header reached the first route's upstream
				if clear {
					want = "second 1"
				}
				require.Equal(t, want, string(got), "%s with body %q", method, body)
			}
			t.Logf("figures: clear_route_cache=%v first=%d second=%d", clear, first.Load(), second.Load())
		})
	}
}
