package deploy

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// The EnvoyFilters' gRPC replays end to end: a real Envoy on a bootstrap
// with every patch applied as Istio would (istioBootstrap), the real
// idemproxy with its replay endpoint and bearer token, real Redis, and
// cmd/backend's gRPC TestService as the workload, called by a grpc-go
// client. No Istio control plane: Istio's part (generating listeners and
// routes, and patching them) is simulated; the mesh's mutual TLS is
// replaced by the token, the documented alternative.

// istioGRPCStack is idemproxy and the workload, shared by the Envoys of
// one test.
type istioGRPCStack struct {
	token                     string
	extProc, replay, adminURL string // idemproxy's listeners
	backendHTTP, backendGRPC  string // cmd/backend's listeners
}

func startIstioGRPCStack(t *testing.T) *istioGRPCStack {
	t.Helper()
	s := &istioGRPCStack{token: "istio-replay-test-token-0123456789abcdef"}
	p := startProcs(t, []string{"--grpc-addr", "127.0.0.1:0"}, []string{"--replay-addr", "127.0.0.1:0",
		"--auth-token-file", writeTempFile(t, "token", s.token+"\n"), "--health-interval", "200ms"})
	s.backendHTTP, s.backendGRPC = p.backendHTTP, p.backend.LogAddr(t, "grpc listening")
	s.extProc, s.replay = p.extProc, p.idemproxy.LogAddr(t, "replay endpoint listening")
	s.adminURL = "http://" + p.admin
	return s
}

// envoy runs a real Envoy on file's patches (those in skip left out), with
// idemproxy's token where the files say to put it, and returns a gRPC
// client of its listener.
func (s *istioGRPCStack) envoy(t *testing.T, file string, skip ...networkingv1alpha3.EnvoyFilter_ApplyTo) testgrpc.TestServiceClient {
	t.Helper()
	ef, filter := loadEnvoyFilter(t, file)
	_, extProc := compositeParts(t, filter)
	gs := extProc["grpc_service"].(generic)
	md, _ := gs["initial_metadata"].([]any)
	gs["initial_metadata"] = append(md, generic{"key": "authorization", "value": "Bearer " + s.token})
	cluster := func(name, addr string, http2 bool) generic {
		host, port := splitHostPort(t, addr)
		return staticCluster(name, host, port, http2)
	}
	cfg := istioBootstrap(t, ef, filter, skip,
		cluster(idemproxyCluster(t), s.extProc, true),
		cluster(replayCluster(t), s.replay, true),
		cluster("backend", s.backendGRPC, true)) // the workload's gRPC port: HTTP/2
	headers := replayRouteToken(t, file, s.token)
	for _, vh := range dig(t, cfg, "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0",
		"typed_config", "route_config", "virtual_hosts").([]any) {
		if r := dig(t, vh, "routes", "0").(generic); r["name"] == "idemproxy-replay" {
			r["request_headers_to_add"] = headers
		}
	}
	_, listener := runEnvoy(t, envoyBinary(t), cfg)
	conn, err := grpc.NewClient(listener, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// splitHostPort splits a listener's address for staticCluster.
func splitHostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return host, n
}

// replayRouteToken is the replay route's commented request_headers_to_add,
// uncommented, with token in it.
func replayRouteToken(t *testing.T, file, token string) any {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  #   (request_headers_to_add:)\n  #   (- header: .*)\n  #     (append_action: .*)$`).
		FindStringSubmatch(string(readRepoFile(t, "deploy", "istio", file)))
	require.NotNil(t, m, "the replay route's commented token header is gone")
	var v generic
	require.NoError(t, yaml.Unmarshal([]byte(m[1]+"\n"+m[2]+"\n  "+m[3]+"\n"), &v))
	b, err := json.Marshal(v["request_headers_to_add"])
	require.NoError(t, err)
	require.Contains(t, string(b), "Bearer \\u003ctoken\\u003e")
	var out any
	require.NoError(t, json.Unmarshal([]byte(strings.ReplaceAll(string(b), "\\u003ctoken\\u003e", token)), &out))
	return out
}

// executions is how often the workload ran key (cmd/backend's /stats).
func (s *istioGRPCStack) executions(t *testing.T, key string) int {
	t.Helper()
	resp, err := http.Get("http://" + s.backendHTTP + "/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st struct {
		Keys map[string]int `json:"keys"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	return st.Keys[key]
}

// replays reads idemproxy_replay_requests_total for one result.
func (s *istioGRPCStack) replays(t *testing.T, result string) float64 {
	t.Helper()
	return testenv.Metric(t, s.adminURL+"/metrics", `idemproxy_replay_requests_total{result="`+result+`"}`)
}

// grpcCall is one UnaryCall's outcome.
type grpcCall struct {
	body            string
	code            codes.Code
	header, trailer metadata.MD
}

// call makes one UnaryCall with the metadata pairs md.
func call(t *testing.T, c testgrpc.TestServiceClient, payload string, md ...string) grpcCall {
	t.Helper()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(t.Context(), md...), 20*time.Second)
	defer cancel()
	var r grpcCall
	resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte(payload)}},
		grpc.Header(&r.header), grpc.Trailer(&r.trailer))
	r.code, r.body = status.Code(err), string(resp.GetPayload().GetBody())
	return r
}

// TestIstioEnvoyFilter_GRPCReplay: through each EnvoyFilter's patches, a
// keyed unary call runs once and its retry gets the original message,
// status and trailing metadata from idemproxy's replay endpoint; a
// client's own x-idemproxy-replay never reaches that endpoint. The fault
// halves show what each replay patch prevents: without the header removal
// a forged header reaches the endpoint; without the route a retry fails
// (INTERNAL misconfigured) but does not run again.
func TestIstioEnvoyFilter_GRPCReplay(t *testing.T) {
	s := startIstioGRPCStack(t)
	for file := range istioFilters {
		t.Run(file, func(t *testing.T) {
			c := s.envoy(t, file)
			key := "istio-grpc-" + strings.TrimSuffix(file, ".yaml")
			served := s.replays(t, "served")

			first := call(t, c, "5000", "idempotency-key", key)
			require.Equal(t, codes.OK, first.code)
			require.Equal(t, "ch_grpc_1: 5000", first.body)
			require.Equal(t, []string{"ch_grpc_1"}, first.trailer.Get("charge-id"))
			require.Empty(t, first.header.Get("idempotent-replayed"))

			retry := call(t, c, "5000", "idempotency-key", key)
			require.Equal(t, codes.OK, retry.code, "grpc-status 0 arrived in the trailers")
			require.Equal(t, first.body, retry.body)
			require.Equal(t, first.trailer.Get("charge-id"), retry.trailer.Get("charge-id"))
			require.Equal(t, []string{"true"}, retry.header.Get("idempotent-replayed"))
			require.Equal(t, 1, s.executions(t, key), "the call ran once")
			require.Equal(t, served+1, s.replays(t, "served"), "the retry came from the replay endpoint")
			t.Logf("first %q charge-id %v; retry %q charge-id %v idempotent-replayed %v", first.body, first.trailer.Get("charge-id"),
				retry.body, retry.trailer.Get("charge-id"), retry.header.Get("idempotent-replayed"))

			noReplay := s.replays(t, "no_replay")
			forged := call(t, c, "1", "idempotency-key", key+"-forged", "x-idemproxy-replay", "forged")
			require.Equal(t, codes.OK, forged.code)
			require.Empty(t, forged.header.Get("idempotent-replayed"))
			require.Equal(t, 1, s.executions(t, key+"-forged"), "a keyed call with a forged header runs as any other")
			keyless := call(t, c, "2", "x-idemproxy-replay", "forged")
			require.Equal(t, codes.OK, keyless.code, "a keyless call with a forged header reaches the workload")
			require.Equal(t, noReplay, s.replays(t, "no_replay"), "no forged header reached the replay endpoint")

			t.Run("fault: without the connection manager's header removal", func(t *testing.T) {
				c := s.envoy(t, file, networkingv1alpha3.EnvoyFilter_NETWORK_FILTER)
				got := call(t, c, "3", "x-idemproxy-replay", "forged")
				require.Equal(t, codes.Unavailable, got.code, "the replay endpoint's 503 replay-unavailable")
				require.Equal(t, noReplay+1, s.replays(t, "no_replay"), "the forged header picked the replay route")
			})
			// Why the route patch is not optional once idemproxy runs its
			// replay endpoint: idemproxy re-routes the retry, and an Envoy
			// without the route sends it to the workload, as a bodiless
			// call to /.idemproxy/replay that runs nothing there; idemproxy
			// answers INTERNAL misconfigured.
			t.Run("fault: without the replay route a retry fails but does not run again", func(t *testing.T) {
				c := s.envoy(t, file, networkingv1alpha3.EnvoyFilter_HTTP_ROUTE)
				k := key + "-noroute"
				first := call(t, c, "7", "idempotency-key", k)
				retry := call(t, c, "7", "idempotency-key", k)
				require.Equal(t, codes.OK, first.code)
				require.Equal(t, codes.Internal, retry.code)
				require.Equal(t, []string{"urn:idemproxy:problem:misconfigured"}, retry.trailer.Get("idempotency-problem"))
				require.Equal(t, 1, s.executions(t, k), "the retry ran nothing at the workload")
				t.Logf("without the route: first %q, retry %q, executions %d", first.body, retry.body, s.executions(t, k))
			})
		})
	}
}
