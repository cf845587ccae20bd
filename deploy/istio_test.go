package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1 "istio.io/api/security/v1"
	"sigs.k8s.io/yaml"
)

// istioFilters are the shipped EnvoyFilters and where each one applies.
var istioFilters = map[string]struct {
	context  networkingv1alpha3.EnvoyFilter_PatchContext
	selector map[string]string
}{
	"envoyfilter-sidecar.yaml": {networkingv1alpha3.EnvoyFilter_SIDECAR_INBOUND, map[string]string{"app": "payments"}},
	"envoyfilter-gateway.yaml": {networkingv1alpha3.EnvoyFilter_GATEWAY, map[string]string{"istio": "ingressgateway"}},
}

// loadEnvoyFilter decodes an EnvoyFilter into Istio's own API type; protojson
// rejects unknown fields, as Istio's validation does. It returns the HTTP
// filter the patch inserts.
func loadEnvoyFilter(t *testing.T, file string) (*networkingv1alpha3.EnvoyFilter, generic) {
	t.Helper()
	js, err := yaml.YAMLToJSON(readRepoFile(t, "deploy", "istio", file))
	require.NoError(t, err)
	var obj struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Metadata   json.RawMessage `json:"metadata"`
		Spec       json.RawMessage `json:"spec"`
	}
	dec := json.NewDecoder(strings.NewReader(string(js)))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&obj))
	require.Equal(t, "networking.istio.io/v1alpha3", obj.APIVersion)
	require.Equal(t, "EnvoyFilter", obj.Kind)
	var ef networkingv1alpha3.EnvoyFilter
	require.NoError(t, protojson.Unmarshal(obj.Spec, &ef))
	require.Len(t, ef.ConfigPatches, 5, "idemproxy's filter, the one that removes a client's fence, the attempt counts, "+
		"the removal of a client's replay header and the replay route")
	return &ef, ef.ConfigPatches[0].Patch.Value.AsMap()
}

// fenceFilter is the EnvoyFilter's second patch: the header_mutation filter
// that removes a client's Idempotency-Fence before idemproxy's filter.
func fenceFilter(t *testing.T, ef *networkingv1alpha3.EnvoyFilter) generic {
	t.Helper()
	cp := ef.ConfigPatches[1]
	require.Equal(t, ef.ConfigPatches[0].Match.Context, cp.Match.Context)
	require.Equal(t, networkingv1alpha3.EnvoyFilter_Patch_INSERT_BEFORE, cp.Patch.Operation)
	require.Equal(t, "idemproxy.composite", cp.Match.GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName(),
		"before idemproxy's filter, so a client's fence is gone before idemproxy sets its own")
	v := cp.Patch.Value.AsMap()
	require.Equal(t, []any{map[string]any{"remove": "idempotency-fence"}}, dig(t, v, "typed_config", "mutations", "request_mutations"))
	return v
}

// attemptCountPatch is the EnvoyFilter's third patch: the virtual hosts'
// attempt counts, as envoy/envoy.yaml sets them. It returns the merged value
// (Envoy itself parses it in TestIstioEnvoyFilter_OnlyKeyedRequestsReachIdemproxy).
func attemptCountPatch(t *testing.T, ef *networkingv1alpha3.EnvoyFilter) generic {
	t.Helper()
	cp := ef.ConfigPatches[2]
	require.Equal(t, networkingv1alpha3.EnvoyFilter_VIRTUAL_HOST, cp.ApplyTo)
	require.Equal(t, ef.ConfigPatches[0].Match.Context, cp.Match.Context, "the virtual hosts of the Envoy that runs idemproxy's filter")
	require.Nil(t, cp.Match.GetRouteConfiguration(), "every virtual host: the filter covers them all")
	require.Equal(t, networkingv1alpha3.EnvoyFilter_Patch_MERGE, cp.Patch.Operation)
	return cp.Patch.Value.AsMap()
}

// idemproxyCluster is the outbound cluster Istio creates for the idemproxy
// Service of deploy/kubernetes: outbound|<port>||<name>.<namespace>.svc...
func idemproxyCluster(t *testing.T) string {
	t.Helper()
	var kust struct {
		Namespace string `json:"namespace"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy", "kubernetes", "kustomization.yaml"), &kust))
	return fmt.Sprintf("outbound|50051||idemproxy.%s.svc.cluster.local", kust.Namespace)
}

// nativeExtProc is the ext_proc filter config of envoy/envoy.yaml, the one
// the end-to-end tests run idemproxy behind.
func nativeExtProc(t *testing.T) generic {
	t.Helper()
	hcm := dig(t, loadGeneric(t, "envoy", "envoy.yaml"), "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config")
	for _, f := range dig(t, hcm, "http_filters").([]any) {
		if dig(t, f, "name") == "envoy.filters.http.ext_proc" {
			return dig(t, f, "typed_config").(generic)
		}
	}
	require.FailNow(t, "envoy.yaml has no ext_proc filter")
	return nil
}

// compositeParts takes the composite filter apart: the headers whose
// presence runs ext_proc, and the ext_proc config it runs.
func compositeParts(t *testing.T, filter generic) (headers []string, extProc generic) {
	t.Helper()
	tc := dig(t, filter, "typed_config")
	require.Equal(t, "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher", dig(t, tc, "@type"))
	require.Equal(t, "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite",
		dig(t, tc, "extension_config", "typed_config", "@type"))
	matchers := dig(t, tc, "xds_matcher", "matcher_list", "matchers").([]any)
	require.Len(t, matchers, 1)
	require.NotContains(t, dig(t, tc, "xds_matcher").(generic), "on_no_match", "requests without a key must skip ext_proc")
	for _, p := range dig(t, matchers[0], "predicate", "or_matcher", "predicate").([]any) {
		sp := dig(t, p, "single_predicate")
		require.Equal(t, "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput", dig(t, sp, "input", "typed_config", "@type"))
		require.Equal(t, ".*", dig(t, sp, "value_match", "safe_regex", "regex"), "any value: presence is what counts")
		headers = append(headers, dig(t, sp, "input", "typed_config", "header_name").(string))
	}
	action := dig(t, matchers[0], "on_match", "action", "typed_config")
	require.Equal(t, "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction", dig(t, action, "@type"))
	return headers, dig(t, action, "typed_config", "typed_config").(generic)
}

func TestIstioEnvoyFilter_Spec(t *testing.T) {
	keyHeaders := strings.Split(decodeConfigMapValue(t, "IDEMPROXY_KEY_HEADERS"), ",")
	var values []generic
	for file, want := range istioFilters {
		t.Run(file, func(t *testing.T) {
			ef, filter := loadEnvoyFilter(t, file)
			require.Equal(t, want.selector, ef.WorkloadSelector.Labels)
			cp := ef.ConfigPatches[0]
			require.Equal(t, networkingv1alpha3.EnvoyFilter_HTTP_FILTER, cp.ApplyTo)
			require.Equal(t, want.context, cp.Match.Context)
			hcm := cp.Match.GetListener().GetFilterChain().GetFilter()
			require.Equal(t, "envoy.filters.network.http_connection_manager", hcm.GetName())
			require.Equal(t, "envoy.filters.http.router", hcm.GetSubFilter().GetName())
			require.Equal(t, networkingv1alpha3.EnvoyFilter_Patch_INSERT_BEFORE, cp.Patch.Operation)

			headers, extProc := compositeParts(t, filter)
			require.ElementsMatch(t, keyHeaders, headers, "the matcher must cover idemproxy's key headers")
			require.Equal(t, idemproxyCluster(t), dig(t, extProc, "grpc_service", "envoy_grpc", "cluster_name"))
			// Everything else is envoy.yaml's ext_proc, setting for setting.
			native := deepCopy(t, nativeExtProc(t)).(generic)
			mine := deepCopy(t, extProc).(generic)
			delete(native, "grpc_service")
			delete(mine, "grpc_service")
			require.Equal(t, native, mine)
			values = append(values, filter)
		})
	}
	require.Len(t, values, len(istioFilters))
	require.Equal(t, values[0], values[1], "the sidecar and gateway variants insert the same filter")
}

// decodeConfigMapValue reads one setting of deploy/kubernetes/configmap.yaml.
func decodeConfigMapValue(t *testing.T, key string) string {
	t.Helper()
	o := decodeK8s(t, yamlDocs(t, readRepoFile(t, "deploy", "kubernetes", "configmap.yaml")))
	v, ok := o.configMaps["idemproxy"].Data[key]
	require.True(t, ok, key)
	return v
}

func TestIstioEnvoyFilter_Validate(t *testing.T) {
	t.Parallel()
	bin := envoyBinary(t)
	for file := range istioFilters {
		t.Run(file, func(t *testing.T) {
			ef, filter := loadEnvoyFilter(t, file)
			// Envoy allows Istio's cluster names ("outbound|50051||...") as is.
			// Every patch applied, as Istio would.
			cfg := istioBootstrap(t, ef, filter, nil,
				staticCluster(idemproxyCluster(t), "127.0.0.1", 50051, true),
				staticCluster(replayCluster(t), "127.0.0.1", 50052, true),
				staticCluster("backend", "127.0.0.1", 8081, false))
			path := filepath.Join(t.TempDir(), "bootstrap.json")
			b, err := json.Marshal(cfg)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path, b, 0o600))
			validateEnvoy(t, bin, path)
		})
	}
}

// TestIstioEnvoyFilter_OnlyKeyedRequestsReachIdemproxy runs the inserted
// filter in a real Envoy between a client and a backend, with a recording
// ext_proc server in idemproxy's place.
func TestIstioEnvoyFilter_OnlyKeyedRequestsReachIdemproxy(t *testing.T) {
	t.Parallel()
	bin := envoyBinary(t)
	for file := range istioFilters {
		t.Run(file, func(t *testing.T) {
			ef, filter := loadEnvoyFilter(t, file)
			proc, procPort, stopProc := startProcessor(t)
			var fenced, attemptCounted atomic.Int32
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("Idempotency-Fence") != "" {
					fenced.Add(1)
				}
				if r.Header.Get("X-Envoy-Attempt-Count") == "1" {
					attemptCounted.Add(1)
				}
				body, _ := io.ReadAll(r.Body)
				w.WriteHeader(http.StatusCreated)
				fmt.Fprintf(w, `{"charged":%s}`, body)
			}))
			t.Cleanup(backend.Close)
			host, port, err := net.SplitHostPort(backend.Listener.Addr().String())
			require.NoError(t, err)
			backendPort, err := strconv.Atoi(port)
			require.NoError(t, err)
			// Every patch applied as Istio would (the replay route's cluster
			// is never reached here: idemproxy's stand-in sets no replay header).
			cfg := istioBootstrap(t, ef, filter, nil,
				staticCluster(idemproxyCluster(t), "127.0.0.1", procPort, true),
				staticCluster(replayCluster(t), "127.0.0.1", procPort, true),
				staticCluster("backend", host, backendPort, false))
			_, listener := runEnvoy(t, bin, cfg)

			var responseAttempts []string
			post := func(header, key string) (int, string) {
				req, err := http.NewRequest(http.MethodPost, "http://"+listener+"/charge", strings.NewReader(`{"amount":5000}`))
				require.NoError(t, err)
				if header != "" {
					req.Header.Set(header, key)
				}
				req.Header.Set("Idempotency-Fence", "999999") // a client's own: never passed on
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				responseAttempts = append(responseAttempts, resp.Header.Get("X-Envoy-Attempt-Count"))
				return resp.StatusCode, string(body)
			}

			code, body := post("", "")
			require.Equal(t, http.StatusCreated, code)
			require.Equal(t, `{"charged":{"amount":5000}}`, body)
			require.Empty(t, proc.recorded(), "a request without a key must not open a stream")

			wantStream := []string{
				"request_headers end_of_stream=false",
				`request_body "{\"amount\":5000}" end_of_stream=true`, // BUFFERED: one whole body
				"response_headers attributes=[response.code_details=via_upstream]",
				`response_body "{\"charged\":{\"amount\":5000}}"`, // STREAMED
				"response_body end_of_stream",
			}
			for i, header := range []string{"Idempotency-Key", "X-Idempotency-Key"} {
				code, body = post(header, "order-42")
				require.Equal(t, http.StatusCreated, code, header)
				require.Equal(t, `{"charged":{"amount":5000}}`, body, header)
				streams := proc.recorded()
				require.Len(t, streams, i+1, header)
				require.Equal(t, wantStream, streams[i], header)
				require.Equal(t, []string{"never-sent"}, proc.streamMetadata(i).Get("x-idemproxy-retries"), header)
			}
			require.Equal(t, int32(3), attemptCounted.Load(), "each attempt carries its count (include_request_attempt_count)")
			require.Equal(t, []string{"1", "1", "1"}, responseAttempts, "and so does each response (include_attempt_count_in_response)")

			require.Zero(t, fenced.Load(), "no client's fence reached the workload, keyed or not")

			t.Run("fails closed without idemproxy", func(t *testing.T) {
				stopProc()
				code, _ := post("Idempotency-Key", "order-43")
				require.Equal(t, http.StatusInternalServerError, code)
				code, _ = post("", "")
				require.Equal(t, http.StatusCreated, code, "requests without a key never depended on idemproxy")
			})
		})
	}
}

// TestIstioEnvoyFilter_InitialMetadata checks the per-workload policy the
// EnvoyFilters document in a comment: with the commented initial_metadata
// entries put in, idemproxy receives them as gRPC metadata on each stream.
func TestIstioEnvoyFilter_InitialMetadata(t *testing.T) {
	t.Parallel()
	bin := envoyBinary(t)
	raw := string(readRepoFile(t, "deploy", "istio", "envoyfilter-sidecar.yaml"))
	entries := regexp.MustCompile(`(?m)^\s*# - \{ key: (x-idemproxy-[a-z-]+), value: ([^ ]+) \}$`).FindAllStringSubmatch(raw, -1)
	require.NotEmpty(t, entries, "the commented initial_metadata example is gone")
	_, filter := loadEnvoyFilter(t, "envoyfilter-sidecar.yaml")
	_, extProc := compositeParts(t, filter)
	md, _ := extProc["grpc_service"].(generic)["initial_metadata"].([]any) // the shipped declaration
	for _, e := range entries {
		md = append(md, generic{"key": e[1], "value": e[2]})
	}
	extProc["grpc_service"].(generic)["initial_metadata"] = md

	proc, procPort, _ := startProcessor(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(backend.Close)
	_, port, err := net.SplitHostPort(backend.Listener.Addr().String())
	require.NoError(t, err)
	backendPort, err := strconv.Atoi(port)
	require.NoError(t, err)
	_, listener := runEnvoy(t, bin, filterBootstrap(filter,
		staticCluster(idemproxyCluster(t), "127.0.0.1", procPort, true),
		staticCluster("backend", "127.0.0.1", backendPort, false)))

	req, err := http.NewRequest(http.MethodPost, "http://"+listener+"/charge", strings.NewReader("{}"))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", "k")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, proc.recorded(), 1)
	got := proc.streamMetadata(0)
	for _, e := range entries {
		require.Equal(t, []string{e[2]}, got.Get(e[1]), e[1])
	}
	require.Equal(t, []string{"never-sent"}, got.Get("x-idemproxy-retries"), "the shipped declaration stays")
}

// TestIstioEnvoyFilter_RetryDetection checks the EnvoyFilters against
// envoy/envoy.yaml's detection of double runs: the virtual hosts carry both
// attempt counts, and the filter declares never-sent retries, which holds
// only with the keyed routes' retries of virtualservice-retries.yaml (checked
// by TestRetries_IstioVirtualServices) or the inbound sidecar's own.
func TestIstioEnvoyFilter_RetryDetection(t *testing.T) {
	vhost := dig(t, loadGeneric(t, "envoy", "envoy.yaml"), "static_resources", "listeners", "0", "filter_chains", "0",
		"filters", "0", "typed_config", "route_config", "virtual_hosts", "0").(generic)
	require.Equal(t, true, vhost["include_attempt_count_in_response"], "envoy.yaml changed: keep the mesh configs in step")
	require.Equal(t, true, vhost["include_request_attempt_count"], "envoy.yaml changed: keep the mesh configs in step")
	for file := range istioFilters {
		t.Run(file, func(t *testing.T) {
			ef, filter := loadEnvoyFilter(t, file)
			require.Equal(t, generic{"include_attempt_count_in_response": true, "include_request_attempt_count": true},
				attemptCountPatch(t, ef))
			_, extProc := compositeParts(t, filter)
			require.Equal(t, []any{generic{"key": "x-idemproxy-retries", "value": "never-sent"}},
				dig(t, extProc, "grpc_service", "initial_metadata"))
			raw := string(readRepoFile(t, "deploy", "istio", file))
			require.Contains(t, raw, "virtualservice-retries.yaml", "the declaration's condition is documented")
		})
	}
}

// TestIstio_Authorization decodes the mesh's authentication of Envoy to
// idemproxy into Istio's own types: strict mutual TLS for idemproxy's pods,
// and only the listed workloads may reach the gRPC port.
func TestIstio_Authorization(t *testing.T) {
	docs := yamlDocs(t, readRepoFile(t, "deploy", "istio", "authorization.yaml"))
	require.Len(t, docs, 2)
	labels := decodeK8s(t, yamlDocs(t, readRepoFile(t, "deploy", "kubernetes", "deployment.yaml"))).deployments["idemproxy"].Spec.Selector.MatchLabels
	spec := func(doc []byte, kind string) json.RawMessage {
		js, err := yaml.YAMLToJSON(doc)
		require.NoError(t, err)
		var obj struct {
			APIVersion string          `json:"apiVersion"`
			Kind       string          `json:"kind"`
			Metadata   json.RawMessage `json:"metadata"`
			Spec       json.RawMessage `json:"spec"`
		}
		dec := json.NewDecoder(strings.NewReader(string(js)))
		dec.DisallowUnknownFields()
		require.NoError(t, dec.Decode(&obj))
		require.Equal(t, "security.istio.io/v1", obj.APIVersion)
		require.Equal(t, kind, obj.Kind)
		return obj.Spec
	}
	var pa securityv1.PeerAuthentication
	require.NoError(t, protojson.Unmarshal(spec(docs[0], "PeerAuthentication"), &pa))
	require.Equal(t, labels, pa.GetSelector().GetMatchLabels())
	require.Equal(t, securityv1.PeerAuthentication_MutualTLS_STRICT, pa.GetMtls().GetMode())

	var ap securityv1.AuthorizationPolicy
	require.NoError(t, protojson.Unmarshal(spec(docs[1], "AuthorizationPolicy"), &ap))
	require.Equal(t, labels, ap.GetSelector().GetMatchLabels())
	require.Equal(t, securityv1.AuthorizationPolicy_ALLOW, ap.GetAction())
	var grpcRule *securityv1.Rule
	for _, r := range ap.GetRules() {
		for _, to := range r.GetTo() {
			if slices.Contains(to.GetOperation().GetPorts(), "50051") {
				grpcRule = r
			}
		}
	}
	require.NotNil(t, grpcRule, "a rule for the gRPC port")
	require.Contains(t, grpcRule.GetTo()[0].GetOperation().GetPorts(), "50052", "the replay port admits the same workloads")
	require.NotEmpty(t, grpcRule.GetFrom(), "the gRPC port is for named workloads only")
	for _, from := range grpcRule.GetFrom() {
		require.NotEmpty(t, from.GetSource().GetPrincipals())
	}
}
