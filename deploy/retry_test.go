package deploy

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// safeRetryOn are the only retry conditions a keyed route may have: each
// re-sends only a request that never reached the upstream, measured on
// Envoy 1.36.2 and 1.40.0 (docs/envoy-and-mesh.md, Retries). Every other
// condition (5xx, gateway-error, reset, retriable-status-codes, the gRPC
// ones, which read a status the upstream sent) may re-send a request that
// ran, behind idemproxy's back: Envoy's router retries after ext_proc.
var safeRetryOn = []string{"connect-failure", "refused-stream", "reset-before-request"}

// unsafeRetryOn returns the conditions of a comma-separated retry_on that
// may re-send a request that ran.
func unsafeRetryOn(retryOn string) []string {
	var bad []string
	for c := range strings.SplitSeq(retryOn, ",") {
		if c = strings.TrimSpace(c); !slices.Contains(safeRetryOn, c) {
			bad = append(bad, c)
		}
	}
	return bad
}

// The check the tests below rely on refuses the policies that ran requests
// twice: Istio's default (istio/istio#50506), Envoy Gateway's default, and
// the usual "retry on any failure" ones.
func TestRetries_CheckRefusesUnsafePolicies(t *testing.T) {
	for retryOn, bad := range map[string][]string{
		"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes": {"unavailable", "cancelled", "retriable-status-codes"},
		"connect-failure,refused-stream,unavailable,cancelled,resource-exhausted":     {"unavailable", "cancelled", "resource-exhausted"},
		"5xx":                                  {"5xx"},
		"reset,connect-failure":                {"reset"},
		"gateway-error,reset-before-request":   {"gateway-error"},
		"503":                                  {"503"},
		"reset-before-request,connect-failure": nil,
	} {
		require.Equal(t, bad, unsafeRetryOn(retryOn), retryOn)
	}
}

// TestRetries_EnvoyYAML: in envoy.yaml and envoy-compose.yaml every route
// that runs ext_proc (every route but the keyless one) has a retry policy
// with exactly the safe conditions, a small num_retries, another host when
// there is one, and nothing else: no per_try_timeout (a slow request that
// ran must not become a retry), no status codes, no back-off tuning. The
// keyless route keeps what it has (none).
func TestRetries_EnvoyYAML(t *testing.T) {
	for _, file := range []string{"envoy.yaml", "envoy-compose.yaml"} {
		t.Run(file, func(t *testing.T) {
			hcm := dig(t, loadGeneric(t, "envoy", file), "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config")
			routes := dig(t, hcm, "route_config", "virtual_hosts", "0", "routes").([]any)
			keyed, keyless, refused := 0, 0, 0
			for _, r := range routes {
				perFilter, _ := r.(generic)["typed_per_filter_config"].(generic)
				if _, ok := r.(generic)["direct_response"]; ok {
					// Keyed gRPC calls to methods not listed: Envoy answers,
					// nothing is sent upstream, no ext_proc stream is opened.
					refused++
					require.Equal(t, true, dig(t, perFilter, "envoy.filters.http.ext_proc", "disabled"))
					continue
				}
				route := dig(t, r, "route").(generic)
				if extProc, _ := perFilter["envoy.filters.http.ext_proc"].(generic); extProc["disabled"] == true {
					keyless++
					require.NotContains(t, route, "retry_policy", "the keyless route keeps what it has")
					continue
				}
				keyed++
				match, _ := json.Marshal(dig(t, r, "match"))
				rp, ok := route["retry_policy"].(generic)
				require.True(t, ok, "keyed route %s has no retry policy", match)
				keys := make([]string, 0, len(rp))
				for k := range rp {
					keys = append(keys, k)
				}
				require.ElementsMatch(t, []string{"retry_on", "num_retries", "retry_host_predicate", "host_selection_retry_max_attempts"}, keys, "route %s", match)
				retryOn := rp["retry_on"].(string)
				require.Empty(t, unsafeRetryOn(retryOn), "route %s", match)
				require.ElementsMatch(t, safeRetryOn, strings.Split(retryOn, ","), "route %s", match)
				require.Contains(t, []any{1.0, 2.0}, rp["num_retries"], "route %s", match)
				require.Equal(t, "envoy.retry_host_predicates.previous_hosts", dig(t, rp, "retry_host_predicate", "0", "name"))
			}
			require.Equal(t, 7, keyed, "the replay route (x-idemproxy-replay), /strict/, /wait/ and the two key headers, for HTTP and for gRPC")
			require.Equal(t, 2, keyless, "HTTP and gRPC")
			require.Equal(t, 2, refused, "keyed gRPC calls to unlisted methods, for the two key headers")
		})
	}
}

// TestRetries_IstioVirtualServices: deploy/istio/virtualservice-retries.yaml
// decodes into Istio's own type; for the ingress gateway and for the mesh,
// the keyed route matches exactly idemproxy's key headers and retries only
// on the safe conditions, with no per-try timeout; the keyless route has no
// retries field (Istio's default stays).
func TestRetries_IstioVirtualServices(t *testing.T) {
	keyHeaders := strings.Split(decodeConfigMapValue(t, "IDEMPROXY_KEY_HEADERS"), ",")
	var gateways []string
	for _, doc := range yamlDocs(t, readRepoFile(t, "deploy", "istio", "virtualservice-retries.yaml")) {
		apiVersion, kind := typeOf(t, doc)
		require.Equal(t, "networking.istio.io/v1 VirtualService", apiVersion+" "+kind)
		js, err := yaml.YAMLToJSON(doc)
		require.NoError(t, err)
		var obj struct {
			Metadata struct{ Name, Namespace string }
			Spec     json.RawMessage
		}
		require.NoError(t, json.Unmarshal(js, &obj))
		var vs networkingv1alpha3.VirtualService
		require.NoError(t, protojson.Unmarshal(obj.Spec, &vs), "unknown fields are errors, as in Istio's validation")
		require.Equal(t, "payments", obj.Metadata.Namespace)
		require.Len(t, vs.Gateways, 1)
		gateways = append(gateways, vs.Gateways[0])
		require.Len(t, vs.Http, 2)
		keyed, keyless := vs.Http[0], vs.Http[1]

		var matched []string
		for _, m := range keyed.Match {
			require.Len(t, m.Headers, 1, "one key header per match: the matches are ORed, the headers of one match ANDed")
			for name, v := range m.Headers {
				require.Equal(t, ".*", v.GetRegex(), "any value: presence is what counts")
				matched = append(matched, name)
			}
			require.Nil(t, m.Uri, "the same paths as the keyless route")
		}
		require.ElementsMatch(t, keyHeaders, matched)

		r := keyed.Retries
		require.NotNil(t, r, "without a retries field Istio applies its default, which retries 503")
		require.Empty(t, unsafeRetryOn(r.RetryOn))
		require.ElementsMatch(t, safeRetryOn, strings.Split(r.RetryOn, ","))
		require.Contains(t, []int32{1, 2}, r.Attempts)
		require.Nil(t, r.PerTryTimeout, "a per-try timeout would cut a request that may be running")
		require.True(t, r.RetryIgnorePreviousHosts == nil || r.RetryIgnorePreviousHosts.Value, "another host when there is one")
		require.NotNil(t, r.RetryRemoteLocalities)

		require.Empty(t, keyless.Match)
		require.Nil(t, keyless.Retries, "the keyless route keeps Istio's default")
		require.Equal(t, keyed.Route[0].Destination.Host, keyless.Route[0].Destination.Host)
		require.Equal(t, keyed.Route[0].Destination.Port.Number, keyless.Route[0].Destination.Port.Number)
		require.Equal(t, keyed.Timeout.AsDuration(), keyless.Timeout.AsDuration())
		require.Equal(t, "payments.payments.svc.cluster.local", keyed.Route[0].Destination.Host)
	}
	require.ElementsMatch(t, []string{"istio-system/ingressgateway", "mesh"}, gateways,
		"the gateway's router (envoyfilter-gateway.yaml) and the callers' sidecars")
}

// TestRetries_EnvoyGatewayPolicy: deploy/envoy-gateway/retry-policy.yaml
// decodes strictly into Envoy Gateway's BackendTrafficPolicy, attaches to
// the keyed HTTPRoute and GRPCRoute only, and its triggers are exactly the safe ones, with
// no status codes and no per-retry timeout. (Envoy Gateway's translation,
// which adds the previous_hosts predicate, is not run here.)
func TestRetries_EnvoyGatewayPolicy(t *testing.T) {
	eg := loadEnvoyGateway(t)
	require.Len(t, eg.traffic, 1)
	p := eg.traffic[0]
	keyed, keyedGRPC := eg.routes["payments-keyed"], eg.grpc["payments-grpc-keyed"]
	require.NotNil(t, keyed)
	require.NotNil(t, keyedGRPC)
	require.Len(t, p.Spec.TargetRefs, 2)
	for i, want := range []struct{ kind, name string }{{"HTTPRoute", keyed.Name}, {"GRPCRoute", keyedGRPC.Name}} {
		ref := p.Spec.TargetRefs[i]
		require.Equal(t, gwapiv1.Group("gateway.networking.k8s.io"), ref.Group)
		require.Equal(t, gwapiv1.Kind(want.kind), ref.Kind)
		require.Equal(t, gwapiv1.ObjectName(want.name), ref.Name, "the keyed routes only")
	}
	require.Equal(t, keyed.Namespace, p.Namespace)
	require.Equal(t, keyedGRPC.Namespace, p.Namespace)

	r := p.Spec.Retry
	require.NotNil(t, r)
	require.NotNil(t, r.RetryOn, "without retryOn Envoy Gateway retries its default, 503 included")
	var triggers []string
	for _, tr := range r.RetryOn.Triggers {
		triggers = append(triggers, string(tr))
	}
	require.Empty(t, unsafeRetryOn(strings.Join(triggers, ",")))
	require.ElementsMatch(t, safeRetryOn, triggers)
	require.ElementsMatch(t, []egv1a1.TriggerEnum{egv1a1.ResetBeforeRequest, egv1a1.ConnectFailure, egv1a1.RefusedStream}, r.RetryOn.Triggers)
	require.Empty(t, r.RetryOn.HTTPStatusCodes)
	require.Nil(t, r.PerRetry, "a per-retry timeout would cut a request that may be running")
	require.NotNil(t, r.NumRetries)
	require.Contains(t, []int32{1, 2}, *r.NumRetries)
}
