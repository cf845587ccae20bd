package deploy

import (
	"reflect"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"github.com/stretchr/testify/require"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1b1 "sigs.k8s.io/gateway-api/apis/v1beta1"
)

// envoyGateway is deploy/envoy-gateway decoded strictly into Envoy
// Gateway's and the Gateway API's own Go types.
type envoyGateway struct {
	policies []*egv1a1.EnvoyExtensionPolicy
	routes   map[string]*gwapiv1.HTTPRoute
	grpc     map[string]*gwapiv1.GRPCRoute
	grants   []*gwapiv1b1.ReferenceGrant
	proxies  []*egv1a1.EnvoyProxy
	traffic  []*egv1a1.BackendTrafficPolicy
	tls      []*gwapiv1.BackendTLSPolicy
	clients  []*egv1a1.ClientTrafficPolicy
}

// envoyGatewayFiles are the manifests of deploy/envoy-gateway, all of them.
var envoyGatewayFiles = []string{"extension-policy.yaml", "httproute.yaml", "grpcroute.yaml", "referencegrant.yaml",
	"mtls.yaml", "retry-policy.yaml", "client-traffic-policy.yaml"}

func loadEnvoyGateway(t *testing.T) envoyGateway {
	t.Helper()
	eg := envoyGateway{routes: map[string]*gwapiv1.HTTPRoute{}, grpc: map[string]*gwapiv1.GRPCRoute{}}
	for _, file := range envoyGatewayFiles {
		for _, doc := range yamlDocs(t, readRepoFile(t, "deploy", "envoy-gateway", file)) {
			switch apiVersion, kind := typeOf(t, doc); apiVersion + " " + kind {
			case "gateway.envoyproxy.io/v1alpha1 EnvoyExtensionPolicy":
				var v egv1a1.EnvoyExtensionPolicy
				decodeStrict(t, doc, &v)
				eg.policies = append(eg.policies, &v)
			case "gateway.networking.k8s.io/v1 HTTPRoute":
				var v gwapiv1.HTTPRoute
				decodeStrict(t, doc, &v)
				eg.routes[v.Name] = &v
			case "gateway.networking.k8s.io/v1 GRPCRoute":
				var v gwapiv1.GRPCRoute
				decodeStrict(t, doc, &v)
				eg.grpc[v.Name] = &v
			case "gateway.envoyproxy.io/v1alpha1 ClientTrafficPolicy":
				var v egv1a1.ClientTrafficPolicy
				decodeStrict(t, doc, &v)
				eg.clients = append(eg.clients, &v)
			case "gateway.envoyproxy.io/v1alpha1 BackendTrafficPolicy":
				var v egv1a1.BackendTrafficPolicy
				decodeStrict(t, doc, &v)
				eg.traffic = append(eg.traffic, &v)
			case "gateway.envoyproxy.io/v1alpha1 EnvoyProxy":
				var v egv1a1.EnvoyProxy
				decodeStrict(t, doc, &v)
				eg.proxies = append(eg.proxies, &v)
			case "gateway.networking.k8s.io/v1 BackendTLSPolicy":
				var v gwapiv1.BackendTLSPolicy
				decodeStrict(t, doc, &v)
				eg.tls = append(eg.tls, &v)
			case "gateway.networking.k8s.io/v1beta1 ReferenceGrant":
				var v gwapiv1b1.ReferenceGrant
				decodeStrict(t, doc, &v)
				eg.grants = append(eg.grants, &v)
			default:
				require.FailNow(t, "unexpected manifest", "%s: %s %s", file, apiVersion, kind)
			}
		}
	}
	require.Len(t, eg.policies, 1)
	require.Len(t, eg.routes, 2)
	require.Len(t, eg.grpc, 2)
	require.Len(t, eg.grants, 1)
	require.Len(t, eg.clients, 1)
	return eg
}

// TestEnvoyGateway_PolicyMatchesEnvoyYAML maps the EnvoyExtensionPolicy onto
// the ext_proc settings of envoy/envoy.yaml, one by one.
func TestEnvoyGateway_PolicyMatchesEnvoyYAML(t *testing.T) {
	eg := loadEnvoyGateway(t)
	require.Len(t, eg.policies[0].Spec.ExtProc, 1)
	ep := eg.policies[0].Spec.ExtProc[0]
	native := nativeExtProc(t)
	mode := dig(t, native, "processing_mode").(generic)
	bodyMode := map[string]egv1a1.ExtProcBodyProcessingMode{
		"BUFFERED": egv1a1.BufferedExtProcBodyProcessingMode,
		"STREAMED": egv1a1.StreamedExtProcBodyProcessingMode,
	}

	require.NotNil(t, ep.MessageTimeout)
	require.Equal(t, mustDuration(t, dig(t, native, "message_timeout").(string)), mustDuration(t, string(*ep.MessageTimeout)))
	require.NotNil(t, ep.FailOpen)
	require.Equal(t, dig(t, native, "failure_mode_allow"), *ep.FailOpen)
	pm := ep.ProcessingMode
	require.NotNil(t, pm)
	require.Equal(t, dig(t, native, "allow_mode_override"), pm.AllowModeOverride)
	// A present request/response section means its headers are sent.
	require.Equal(t, "SEND", mode["request_header_mode"])
	require.NotNil(t, pm.Request)
	require.Equal(t, bodyMode[mode["request_body_mode"].(string)], *pm.Request.Body)
	require.Equal(t, "SEND", mode["response_header_mode"])
	require.NotNil(t, pm.Response)
	require.Equal(t, bodyMode[mode["response_body_mode"].(string)], *pm.Response.Body)
	var attrs []any
	for _, a := range pm.Response.Attributes {
		attrs = append(attrs, a)
	}
	require.Equal(t, dig(t, native, "response_attributes"), attrs)
	require.Empty(t, pm.Request.Attributes)
	require.Nil(t, ep.ShadowMode, "observability mode would let every request through")
	require.Nil(t, ep.StatusOnError)
}

func TestEnvoyGateway_References(t *testing.T) {
	eg := loadEnvoyGateway(t)
	policy := eg.policies[0]
	keyed, catchAll := eg.routes["payments-keyed"], eg.routes["payments"]
	require.NotNil(t, keyed)
	require.NotNil(t, catchAll)

	t.Run("policy attaches to the keyed routes only", func(t *testing.T) {
		refs := policy.Spec.TargetRefs
		require.Len(t, refs, 2, "payments-keyed and payments-grpc-keyed")
		require.Equal(t, gwapiv1.Group("gateway.networking.k8s.io"), refs[0].Group)
		require.Equal(t, gwapiv1.Kind("HTTPRoute"), refs[0].Kind)
		require.Equal(t, gwapiv1.ObjectName(keyed.Name), refs[0].Name)
		require.Nil(t, policy.Spec.TargetRef)
		require.Empty(t, policy.Spec.TargetSelectors)
		require.Equal(t, keyed.Namespace, policy.Namespace)
	})
	t.Run("backend is the idemproxy Service", func(t *testing.T) {
		refs := policy.Spec.ExtProc[0].BackendRefs
		require.Len(t, refs, 1)
		ref := refs[0].BackendObjectReference
		require.Equal(t, gwapiv1.Group(""), *ref.Group)
		require.Equal(t, gwapiv1.Kind("Service"), *ref.Kind)
		require.Equal(t, gwapiv1.ObjectName("idemproxy"), ref.Name)
		require.EqualValues(t, 50051, *ref.Port)
		// The same Service deploy/kubernetes renders, in its namespace.
		svcs := decodeK8s(t, yamlDocs(t, readRepoFile(t, "deploy", "kubernetes", "service.yaml"))).services
		require.Contains(t, svcs, string(ref.Name))
		require.Equal(t, "outbound|50051||"+string(ref.Name)+"."+string(*ref.Namespace)+".svc.cluster.local", idemproxyCluster(t))
	})
	t.Run("reference grant allows the cross-namespace reference", func(t *testing.T) {
		ref := policy.Spec.ExtProc[0].BackendRefs[0].BackendObjectReference
		g := eg.grants[0]
		require.Equal(t, string(*ref.Namespace), g.Namespace)
		require.Len(t, g.Spec.From, 3, "the policy, and the HTTPRoute and GRPCRoute replay rules")
		require.Equal(t, gwapiv1.Group("gateway.envoyproxy.io"), g.Spec.From[0].Group)
		require.Equal(t, gwapiv1.Kind("EnvoyExtensionPolicy"), g.Spec.From[0].Kind)
		require.Equal(t, gwapiv1.Namespace(policy.Namespace), g.Spec.From[0].Namespace)
		require.Len(t, g.Spec.To, 1)
		require.Equal(t, gwapiv1.Kind("Service"), g.Spec.To[0].Kind)
		require.Equal(t, ref.Name, *g.Spec.To[0].Name)
	})
	t.Run("keyed route matches exactly the key headers", func(t *testing.T) {
		keyHeaders := strings.Split(decodeConfigMapValue(t, "IDEMPROXY_KEY_HEADERS"), ",")
		var matched []string
		for _, rule := range keyed.Spec.Rules[1:] { // [0]: the replay rule (gateway_replay_test.go)
			require.Len(t, rule.Matches, 1)
			m := rule.Matches[0]
			require.Len(t, m.Headers, 1, "one key header per rule: matches within a rule are ANDed")
			h := m.Headers[0]
			require.Equal(t, gwapiv1.HeaderMatchRegularExpression, *h.Type)
			require.Equal(t, ".*", h.Value, "any value: presence is what counts")
			matched = append(matched, strings.ToLower(string(h.Name)))
			require.Equal(t, catchAll.Spec.Rules[0].Matches[0].Path, m.Path, "same paths as the catch-all")
			require.Equal(t, catchAll.Spec.Rules[0].BackendRefs, rule.BackendRefs)
			// No retries here: an Envoy retry may be an execution idemproxy
			// cannot see; the keyed route's are retry-policy.yaml's alone.
			require.Nil(t, rule.Retry)
			require.NotNil(t, rule.Timeouts)
			require.Equal(t, 60*time.Second, mustDuration(t, string(*rule.Timeouts.Request)))
		}
		require.ElementsMatch(t, keyHeaders, matched)
	})
	t.Run("only the keyless route removes a client's fence", func(t *testing.T) {
		f := catchAll.Spec.Rules[0].Filters
		require.Len(t, f, 1)
		require.Equal(t, gwapiv1.HTTPRouteFilterRequestHeaderModifier, f[0].Type)
		require.Equal(t, []string{"Idempotency-Fence"}, f[0].RequestHeaderModifier.Remove)
		for _, rule := range keyed.Spec.Rules {
			require.Empty(t, rule.Filters, "a route-level removal would strip idemproxy's own fence too")
		}
	})
	t.Run("mutual TLS to idemproxy: a client certificate and a checked server", func(t *testing.T) {
		require.Len(t, eg.proxies, 1)
		cc := eg.proxies[0].Spec.BackendTLS.ClientCertificateRef
		require.NotNil(t, cc)
		require.Equal(t, gwapiv1.ObjectName("eg-idemproxy-client-cert"), cc.Name)
		require.Len(t, eg.tls, 1)
		p := eg.tls[0]
		ref := policy.Spec.ExtProc[0].BackendRefs[0].BackendObjectReference
		require.Equal(t, string(*ref.Namespace), p.Namespace)
		require.Len(t, p.Spec.TargetRefs, 2, "the ext_proc port and the replay port")
		require.Equal(t, gwapiv1.Kind("Service"), p.Spec.TargetRefs[0].Kind)
		require.Equal(t, ref.Name, p.Spec.TargetRefs[0].Name)
		require.Equal(t, gwapiv1.SectionName("grpc"), *p.Spec.TargetRefs[0].SectionName, "the Service port named grpc")
		require.Len(t, p.Spec.Validation.CACertificateRefs, 1)
		require.Equal(t, gwapiv1.PreciseHostname("idemproxy.idemproxy.svc.cluster.local"), p.Spec.Validation.Hostname)
	})
	t.Run("catch-all route has no header match", func(t *testing.T) {
		require.Len(t, catchAll.Spec.Rules, 1)
		require.Len(t, catchAll.Spec.Rules[0].Matches, 1)
		require.Empty(t, catchAll.Spec.Rules[0].Matches[0].Headers)
		require.Equal(t, keyed.Spec.ParentRefs, catchAll.Spec.ParentRefs)
		require.Equal(t, keyed.Spec.Hostnames, catchAll.Spec.Hostnames)
		require.Equal(t, keyed.Namespace, catchAll.Namespace)
	})
}

// jsonFields lists every JSON field path under a type, each type visited once.
func jsonFields(t reflect.Type, prefix string, seen map[reflect.Type]bool, out *[]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] {
		return
	}
	seen[t] = true
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		path := prefix
		if name != "" { // "" is an inlined struct
			path = prefix + "." + name
			*out = append(*out, path)
		}
		jsonFields(f.Type, path, seen, out)
	}
}

// TestEnvoyGateway_NoRetryDetection pins what docs/envoy-and-mesh.md says
// of Envoy Gateway v1.9: unlike envoy/envoy.yaml and the Istio filters, no
// policy can turn on Envoy's attempt counts (include_attempt_count_in_response,
// include_request_attempt_count) or give the ext_proc filter gRPC initial
// metadata (x-idemproxy-retries: never-sent). So idemproxy cannot detect a
// retry there, and the safe retries of retry-policy.yaml are what keeps at
// most once. When a newer Envoy Gateway adds either field, this fails: use it.
func TestEnvoyGateway_NoRetryDetection(t *testing.T) {
	var fields []string
	for _, spec := range []any{egv1a1.EnvoyExtensionPolicySpec{}, egv1a1.BackendTrafficPolicySpec{},
		egv1a1.ClientTrafficPolicySpec{}, egv1a1.EnvoyProxySpec{}, egv1a1.SecurityPolicySpec{}} {
		jsonFields(reflect.TypeOf(spec), reflect.TypeOf(spec).Name(), map[reflect.Type]bool{}, &fields)
	}
	require.Contains(t, fields, "EnvoyExtensionPolicySpec.extProc.messageTimeout", "the walk reaches the ext_proc fields")
	require.Contains(t, fields, "BackendTrafficPolicySpec.retry.retryOn.triggers", "the walk reaches the retry fields")
	for _, f := range fields {
		lower := strings.ToLower(f)
		require.NotContains(t, lower, "attemptcount", "Envoy Gateway can set the attempt counts now: %s", f)
		if strings.Contains(lower, ".extproc.") {
			require.NotContains(t, lower, "initialmetadata", "Envoy Gateway's ext_proc takes gRPC metadata now: %s", f)
		}
	}
}
