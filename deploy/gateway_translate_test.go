//go:build egtranslate

package deploy

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// egStack is deploy/envoy-gateway as Envoy Gateway translates it, run by a
// real Envoy in front of the mock backend and idemproxy.
type egStack struct {
	configs []any
	url     string // the Gateway listener
	backend string // the backend's HTTP address (/stats)
	admin   string // idemproxy's admin address (/metrics)
	client  *http.Client
}

// startEGStack translates every manifest but mtls.yaml (no certificates
// here: the ext_proc and replay ports are cleartext on loopback), with the
// GRPCRoutes' method renamed to the backend's (grpc.testing.TestService/
// UnaryCall). idemproxy runs with --replay-all-via-endpoint, so HTTP
// replays take the re-route too: under Envoy Gateway 1.9 nothing else does.
func startEGStack(t *testing.T, egctl string, leaveOut string, edits ...[2]string) *egStack {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	p := startProcs(t, []string{"--grpc-addr", "127.0.0.1:0"}, []string{"--replay-addr", "127.0.0.1:0", "--replay-all-via-endpoint"})
	s := &egStack{backend: p.backendHTTP, admin: p.admin, client: &http.Client{Timeout: 20 * time.Second}}
	up := egUpstreams{"10.0.0.10:8080": s.backend, "10.0.0.11:9000": p.backend.LogAddr(t, "grpc listening"),
		"10.0.0.12:50051": p.extProc, "10.0.0.12:50052": p.idemproxy.LogAddr(t, "replay endpoint listening")}
	var files []string
	for _, f := range envoyGatewayFiles {
		if f != "mtls.yaml" && f != leaveOut {
			files = append(files, f)
		}
	}
	edits = append(edits,
		[2]string{"service: payments.Charges, method: Charge }", "service: grpc.testing.TestService, method: UnaryCall }"},
		[2]string{"service: payments.Charges }", "service: grpc.testing.TestService }"})
	_, listener, _ := testenv.StartEnvoyOnFreePorts(t, envoyBin, func(l, a int) string {
		s.configs = egTranslate(t, egctl, l, files, edits)
		return egBootstrap(t, s.configs, up, a)
	})
	s.url = "http://127.0.0.1:" + strconv.Itoa(listener)
	t.Cleanup(s.client.CloseIdleConnections)
	return s
}

// post sends a POST /charge for payments.example.com with the given headers.
func (s *egStack) post(t *testing.T, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	return s.postTo(t, "/charge", body, headers...)
}

// postTo is post to path.
func (s *egStack) postTo(t *testing.T, path, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.url+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Host = "payments.example.com"
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := s.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// runs is how often the backend executed key (HTTP and gRPC alike); key
// "": requests without one.
func (s *egStack) runs(t *testing.T, key string) int {
	t.Helper()
	resp, err := s.client.Get("http://" + s.backend + "/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st struct {
		Keys  map[string]int
		NoKey int `json:"no_key"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	if key == "" {
		return st.NoKey
	}
	return st.Keys[key]
}

func (s *egStack) metric(t *testing.T, series string) float64 {
	t.Helper()
	m, err := testenv.ScrapeMetrics(t.Context(), http.DefaultClient, "http://"+s.admin+"/metrics")
	require.NoError(t, err)
	v, _ := m.Value(series)
	return v
}

// TestEnvoyGateway_Translated runs deploy/envoy-gateway through Envoy
// Gateway v1.9.1's own translator (egctl, $EGCTL; skipped without it) and
// a real Envoy: the replay rules come first in Envoy's route table, a
// replay re-selects the replay rule (envoyproxy/envoy#43708 reported it
// did not under Envoy Gateway 1.7), a client's replay header is removed,
// and a keyed gRPC call runs once but its retry gets response-not-stored
// (no trailers reach idemproxy). Not run: the controller itself, TLS
// (mtls.yaml), a cluster's Services and endpoints.
func TestEnvoyGateway_Translated(t *testing.T) {
	egctl := os.Getenv(egctlEnv)
	if egctl == "" {
		t.Fatalf("set %s to an egctl v1.9.1 binary: GOBIN=$PWD/bin go install github.com/envoyproxy/gateway/cmd/egctl@v1.9.1 (see gateway_xds_test.go)", egctlEnv)
	}
	s := startEGStack(t, egctl, "")

	t.Run("route table", func(t *testing.T) {
		var replays []string
		for _, r := range egRoutes(t, s.configs) {
			name, _, _ := strings.Cut(r["name"].(string), "/match/")
			if hs, ok := dig(t, r, "match").(generic)["headers"].([]any); ok && dig(t, hs[0], "name") == replayHeader {
				replays = append(replays, name)
				require.Equal(t, replayPath, dig(t, r, "match", "path"), "an exact path: no keyed rule can match it")
			}
		}
		require.ElementsMatch(t, []string{"grpcroute/payments/payments-grpc-keyed/rule/0", "httproute/payments/payments-keyed/rule/0"}, replays)
		hcm := egHCM(t, s.configs)
		require.Equal(t, replayHeader, dig(t, hcm, "earlyHeaderMutationExtensions", "0", "typedConfig", "mutations", "0", "remove"))
		require.Equal(t, "x-idemproxy-original-path", dig(t, hcm, "earlyHeaderMutationExtensions", "0", "typedConfig", "mutations", "1", "remove"))
		for _, f := range dig(t, hcm, "httpFilters").([]any) {
			if strings.HasPrefix(dig(t, f, "name").(string), "envoy.filters.http.ext_proc/") {
				mode := dig(t, f, "typedConfig", "processingMode").(generic)
				require.Equal(t, "BUFFERED", mode["requestBodyMode"])
				require.Equal(t, "STREAMED", mode["responseBodyMode"])
				require.Equal(t, "SKIP", mode["responseTrailerMode"], "Envoy Gateway 1.9 sends no response trailers")
			}
		}
	})
	t.Run("a replay re-selects the replay rule", func(t *testing.T) {
		first, firstBody := s.post(t, `{"amount":5000}`, "Idempotency-Key", "eg-http-1")
		again, againBody := s.post(t, `{"amount":5000}`, "Idempotency-Key", "eg-http-1")
		require.Equal(t, http.StatusOK, first.StatusCode)
		require.Equal(t, http.StatusOK, again.StatusCode)
		require.Equal(t, firstBody, againBody)
		require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
		require.Equal(t, 1, s.runs(t, "eg-http-1"))
		require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="served"}`), "served by the replay endpoint")
	})
	t.Run("a client's replay header is removed before routing", func(t *testing.T) {
		resp, _ := s.post(t, `{"amount":1}`, replayHeader, "forged-token")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, 1, s.runs(t, ""), "the backend ran it, as any keyless request")
		resp, _ = s.postTo(t, replayPath, `{"amount":1}`, replayHeader, "forged-token")
		require.Equal(t, http.StatusNotFound, resp.StatusCode, "on the replay path too: the backend's 404")
		require.EqualValues(t, 0, s.metric(t, `idemproxy_replay_requests_total{result="no_replay"}`), "never reached the replay endpoint")
	})
	// Envoy Gateway's ext_proc skips response trailers; idemproxy asks for
	// them on gRPC calls (mode_override, allowModeOverride is on), so the
	// retry is re-routed by the GRPCRoute's replay rule and replayed.
	t.Run("gRPC: runs once, its retry replayed with the trailers", func(t *testing.T) {
		conn, err := grpc.NewClient(strings.TrimPrefix(s.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority("payments.example.com"))
		require.NoError(t, err)
		defer conn.Close()
		client := testgrpc.NewTestServiceClient(conn)
		ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "eg-grpc-1")
		served := s.metric(t, `idemproxy_replay_requests_total{result="served"}`)
		var trailer, againHeader, againTrailer metadata.MD
		first, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Trailer(&trailer))
		require.NoError(t, err)
		require.Equal(t, []string{"ch_grpc_1"}, trailer.Get("charge-id"))
		again, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Header(&againHeader), grpc.Trailer(&againTrailer))
		require.NoError(t, err, "the replay")
		require.Equal(t, first.GetPayload().GetBody(), again.GetPayload().GetBody())
		require.Equal(t, []string{"ch_grpc_1"}, againTrailer.Get("charge-id"))
		require.Equal(t, []string{"true"}, againHeader.Get("idempotent-replayed"))
		require.Equal(t, served+1, s.metric(t, `idemproxy_replay_requests_total{result="served"}`))
		require.Equal(t, 1, s.runs(t, "eg-grpc-1"))
	})
	// A method the keyed GRPCRoute does not name (EmptyCall; the backend
	// answers UNIMPLEMENTED) still goes through idemproxy with a key: its
	// retry is idemproxy's replay, never a second call.
	t.Run("gRPC: a keyed call to an unnamed method goes through idemproxy", func(t *testing.T) {
		conn, err := grpc.NewClient(strings.TrimPrefix(s.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority("payments.example.com"))
		require.NoError(t, err)
		defer conn.Close()
		client := testgrpc.NewTestServiceClient(conn)
		ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", "eg-grpc-empty")
		replayed := s.metric(t, `idemproxy_requests_total{outcome="replayed"}`)
		acquired := s.metric(t, `idemproxy_requests_total{outcome="acquired"}`)
		for range 2 {
			_, _ = client.EmptyCall(ctx, &testgrpc.Empty{})
		}
		require.Equal(t, acquired+1, s.metric(t, `idemproxy_requests_total{outcome="acquired"}`), "the first call took the key")
		require.Equal(t, replayed+1, s.metric(t, `idemproxy_requests_total{outcome="replayed"}`), "the second was replayed")
	})
}

// httpReplayRule and grpcReplayRule are the replay rules, and lastKeyedRule
// the end of the keyed HTTP rule after which a fault test moves the first.
const (
	httpReplayRule = `  - matches:
    - path: { type: Exact, value: /.idemproxy/replay }
      headers:
      - { type: RegularExpression, name: x-idemproxy-replay, value: ".+" }
    backendRefs:
    - { name: idemproxy, namespace: idemproxy, port: 50052 }
    timeouts:
      request: 10s
`
	grpcReplayRule = `  - matches:
    - method: { type: Exact, service: .idemproxy, method: replay }
      headers:
      - { type: RegularExpression, name: x-idemproxy-replay, value: ".+" }
    backendRefs:
    - { name: idemproxy, namespace: idemproxy, port: 50052 }
`
	lastKeyedRule = `      - { type: RegularExpression, name: x-idempotency-key, value: ".*" }
    backendRefs:
    - { name: payments, port: 8080 }
    timeouts:
      request: 60s
`
)

// TestEnvoyGateway_TranslatedFaults: what each piece of the replay path
// prevents, through Envoy Gateway's translation and a real Envoy ($EGCTL).
func TestEnvoyGateway_TranslatedFaults(t *testing.T) {
	egctl := os.Getenv(egctlEnv)
	if egctl == "" {
		t.Fatalf("set %s to an egctl v1.9.1 binary: GOBIN=$PWD/bin go install github.com/envoyproxy/gateway/cmd/egctl@v1.9.1 (see gateway_xds_test.go)", egctlEnv)
	}
	// The replay rule matches the exact path idemproxy moves a re-routed
	// replay to, so its place among the rules does not matter.
	t.Run("replay rule after the keyed rules: still the one selected", func(t *testing.T) {
		s := startEGStack(t, egctl, "", [2]string{httpReplayRule, ""}, [2]string{lastKeyedRule, lastKeyedRule + httpReplayRule})
		first, firstBody := s.post(t, `{"amount":5000}`, "Idempotency-Key", "eg-http-last")
		again, againBody := s.post(t, `{"amount":5000}`, "Idempotency-Key", "eg-http-last")
		require.Equal(t, http.StatusOK, first.StatusCode)
		require.Equal(t, http.StatusOK, again.StatusCode, againBody)
		require.Equal(t, firstBody, againBody)
		require.Equal(t, 1, s.runs(t, "eg-http-last"))
		require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="served"}`))
	})
	// Without the replay rules the re-routed retry reaches the backend on
	// /.idemproxy/replay without its body (no charge; before idemproxy
	// moved it there, a misplaced rule charged a second time here) and the
	// client gets 500 misconfigured.
	t.Run("no replay rules: the retry fails, nothing runs twice", func(t *testing.T) {
		s := startEGStack(t, egctl, "", [2]string{httpReplayRule, ""}, [2]string{grpcReplayRule, ""})
		first, _ := s.post(t, `{"amount":5000}`, "Idempotency-Key", "eg-http-none")
		again, againBody := s.post(t, `{"amount":5000}`, "Idempotency-Key", "eg-http-none")
		require.Equal(t, http.StatusOK, first.StatusCode)
		require.Equal(t, http.StatusInternalServerError, again.StatusCode, againBody)
		require.Contains(t, againBody, "urn:idemproxy:problem:misconfigured")
		require.Equal(t, 1, s.runs(t, "eg-http-none"), "the bodiless /.idemproxy/replay request ran nothing")
		require.EqualValues(t, 1, s.metric(t, `idemproxy_responses_total{result="replay_misrouted"}`))
	})
	t.Run("no ClientTrafficPolicy: a client's header reaches the replay endpoint", func(t *testing.T) {
		s := startEGStack(t, egctl, "client-traffic-policy.yaml")
		resp, _ := s.postTo(t, replayPath, `{"amount":1}`, replayHeader, "forged-token")
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="no_replay"}`))
		require.Equal(t, 0, s.runs(t, ""), "the backend never saw it")
	})
}
