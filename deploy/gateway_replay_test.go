package deploy

import (
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// replayHeader is the header idemproxy re-routes a replay with
// (processor.ReplayHeader; not imported, which would pull the processor's
// dependencies into this module). envoy.yaml's routes and early removal use
// it too (checked below).
const replayHeader = "x-idemproxy-replay"

// These tests read the manifests; gateway_translate_test.go runs them
// through Envoy Gateway's translator and a real Envoy (opt-in: -tags egtranslate, $EGCTL).

// replayPath is the path idemproxy sends a re-routed replay on
// (processor.ReplayPath, not imported for the same reason).
const replayPath = "/.idemproxy/replay"

// replayRule is one match of a replay rule: its header matches, and where
// it sends the request.
type replayRule struct {
	where   string
	headers []gwapiv1.HTTPHeaderMatch
	backend gwapiv1.BackendObjectReference
	timeout *gwapiv1.Duration
}

// keyedReplayRules checks that each keyed route's first rule is its replay
// rule and that it matches exactly replayPath: the path idemproxy moves a
// re-routed replay to, which no other rule of the route can match as
// specifically (an exact path wins over every prefix, whatever the rule
// order), so a re-routed retry never lands on a keyed rule again. The
// GRPCRoute's is the method /.idemproxy/replay (service ".idemproxy",
// method "replay"): the same path.
func keyedReplayRules(t *testing.T, eg envoyGateway) []replayRule {
	t.Helper()
	var out []replayRule
	http := eg.routes["payments-keyed"]
	require.NotNil(t, http)
	first := http.Spec.Rules[0]
	require.Len(t, first.Matches, 1)
	require.Len(t, first.BackendRefs, 1)
	require.NotNil(t, first.Matches[0].Path)
	require.Equal(t, gwapiv1.PathMatchExact, *first.Matches[0].Path.Type)
	require.Equal(t, replayPath, *first.Matches[0].Path.Value)
	out = append(out, replayRule{where: "HTTPRoute " + http.Name, headers: first.Matches[0].Headers,
		backend: first.BackendRefs[0].BackendObjectReference, timeout: first.Timeouts.Request})
	grpc := eg.grpc["payments-grpc-keyed"]
	require.NotNil(t, grpc)
	gfirst := grpc.Spec.Rules[0]
	require.Len(t, gfirst.Matches, 1)
	require.Len(t, gfirst.BackendRefs, 1)
	m := gfirst.Matches[0].Method
	require.NotNil(t, m)
	require.Equal(t, gwapiv1.GRPCMethodMatchExact, *m.Type)
	require.Equal(t, replayPath, "/"+*m.Service+"/"+*m.Method)
	var headers []gwapiv1.HTTPHeaderMatch
	for _, h := range gfirst.Matches[0].Headers {
		headers = append(headers, gwapiv1.HTTPHeaderMatch{Type: (*gwapiv1.HeaderMatchType)(h.Type), Name: gwapiv1.HTTPHeaderName(h.Name), Value: h.Value})
	}
	out = append(out, replayRule{where: "GRPCRoute " + grpc.Name, headers: headers,
		backend: gfirst.BackendRefs[0].BackendObjectReference})
	return out
}

// TestEnvoyGateway_ReplayRoutes: the replay rules of the keyed HTTPRoute and
// GRPCRoute match a present x-idemproxy-replay and send it to the replay
// port of deploy/kubernetes' idemproxy Service, as envoy/envoy.yaml's
// idemproxy-replay route and cluster do.
func TestEnvoyGateway_ReplayRoutes(t *testing.T) {
	eg := loadEnvoyGateway(t)
	native := nativeReplayRoute(t)
	svc := decodeK8s(t, yamlDocs(t, readRepoFile(t, "deploy", "kubernetes", "service.yaml"))).services["idemproxy"]
	require.NotNil(t, svc)
	var port *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Name == "replay" {
			port = &svc.Spec.Ports[i]
		}
	}
	require.NotNil(t, port, "deploy/kubernetes' Service has the port replay (50052, appProtocol kubernetes.io/h2c: issue 23's naming contract)")
	require.NotNil(t, port.AppProtocol)
	require.Equal(t, "kubernetes.io/h2c", *port.AppProtocol, "Envoy Gateway speaks HTTP/2 to it: the trailers stay trailers")
	require.Equal(t, nativeReplayPort(t), port.Port, "envoy.yaml's idemproxy-replay cluster port")

	for _, r := range keyedReplayRules(t, eg) {
		t.Run(r.where, func(t *testing.T) {
			require.Len(t, r.headers, 1)
			h := r.headers[0]
			require.Equal(t, replayHeader, strings.ToLower(string(h.Name)))
			require.Equal(t, gwapiv1.HeaderMatchRegularExpression, *h.Type, "present: any non-empty value")
			re := regexp.MustCompile("^(?:" + h.Value + ")$")
			require.True(t, re.MatchString("tok-123"))
			require.False(t, re.MatchString(""), "an empty header is no token")
			// Unset group and kind default to the core Service.
			require.True(t, r.backend.Kind == nil || *r.backend.Kind == "Service")
			require.True(t, r.backend.Group == nil || *r.backend.Group == "")
			require.NotNil(t, r.backend.Namespace, "the idemproxy namespace, not the route's")
			require.Equal(t, gwapiv1.ObjectName(svc.Name), r.backend.Name)
			require.Equal(t, gwapiv1.Namespace(kustomizeNamespace(t)), *r.backend.Namespace)
			require.Equal(t, gwapiv1.PortNumber(port.Port), *r.backend.Port)
			if r.timeout != nil {
				require.Equal(t, mustDuration(t, dig(t, native, "route", "timeout").(string)), mustDuration(t, string(*r.timeout)))
			}
		})
	}
	t.Run("no other rule matches the replay header", func(t *testing.T) {
		n := 0
		for _, route := range eg.routes {
			for _, rule := range route.Spec.Rules {
				for _, m := range rule.Matches {
					for _, h := range m.Headers {
						if strings.EqualFold(string(h.Name), replayHeader) {
							n++
						}
					}
				}
			}
		}
		for _, route := range eg.grpc {
			for _, rule := range route.Spec.Rules {
				for _, m := range rule.Matches {
					for _, h := range m.Headers {
						if strings.EqualFold(string(h.Name), replayHeader) {
							n++
						}
					}
				}
			}
		}
		require.Equal(t, 2, n)
	})
}

// TestEnvoyGateway_ReplayHeaderStrippedEarly: a client's own
// x-idemproxy-replay is removed before Envoy chooses a route, on the
// Gateway all the routes attach to, as envoy.yaml's early_header_mutation
// does.
func TestEnvoyGateway_ReplayHeaderStrippedEarly(t *testing.T) {
	eg := loadEnvoyGateway(t)
	p := eg.clients[0]
	require.Len(t, p.Spec.TargetRefs, 1)
	ref := p.Spec.TargetRefs[0]
	require.Equal(t, gwapiv1.Group("gateway.networking.k8s.io"), ref.Group)
	require.Equal(t, gwapiv1.Kind("Gateway"), ref.Kind)
	require.Nil(t, ref.SectionName, "every listener of the Gateway")
	for _, r := range eg.routes {
		require.Equal(t, r.Namespace, p.Namespace)
		require.Len(t, r.Spec.ParentRefs, 1)
		require.Equal(t, ref.Name, r.Spec.ParentRefs[0].Name)
		require.Nil(t, r.Spec.ParentRefs[0].SectionName)
	}
	for _, r := range eg.grpc {
		require.Equal(t, r.Namespace, p.Namespace)
		require.Len(t, r.Spec.ParentRefs, 1)
		require.Equal(t, ref.Name, r.Spec.ParentRefs[0].Name)
		require.Nil(t, r.Spec.ParentRefs[0].SectionName)
	}
	require.NotNil(t, p.Spec.Headers)
	early := p.Spec.Headers.EarlyRequestHeaders
	require.NotNil(t, early)
	require.Empty(t, early.Set)
	require.Empty(t, early.Add)

	hcm := dig(t, loadGeneric(t, "envoy", "envoy.yaml"), "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config")
	var removed []string
	for _, m := range dig(t, hcm, "early_header_mutation_extensions", "0", "typed_config", "mutations").([]any) {
		removed = append(removed, dig(t, m, "remove").(string))
	}
	require.Contains(t, removed, replayHeader)
	require.Equal(t, removed, early.Remove, "the same headers envoy.yaml removes")
}

// TestEnvoyGateway_GRPCRoutes: keyed gRPC calls are the unary methods named
// one by one, with a key header; the keyless route takes the rest of the
// service without the policy.
func TestEnvoyGateway_GRPCRoutes(t *testing.T) {
	eg := loadEnvoyGateway(t)
	keyed, keyless := eg.grpc["payments-grpc-keyed"], eg.grpc["payments-grpc"]
	require.NotNil(t, keyed)
	require.NotNil(t, keyless)
	refs := eg.policies[0].Spec.TargetRefs
	require.Contains(t, refs, gwapiv1.LocalPolicyTargetReferenceWithSectionName{LocalPolicyTargetReference: gwapiv1.LocalPolicyTargetReference{
		Group: "gateway.networking.k8s.io", Kind: "GRPCRoute", Name: gwapiv1.ObjectName(keyed.Name)}})
	require.Equal(t, keyed.Namespace, eg.policies[0].Namespace)

	keyHeaders := strings.Split(decodeConfigMapValue(t, "IDEMPROXY_KEY_HEADERS"), ",")
	require.Len(t, keyed.Spec.Rules, 3, "the replay rule, the unary methods by name, every other method with a key")
	for i, rule := range keyed.Spec.Rules[1:] {
		var matched []string
		require.Len(t, rule.Matches, len(keyHeaders))
		for _, m := range rule.Matches {
			require.NotNil(t, m.Method)
			require.Equal(t, gwapiv1.GRPCMethodMatchExact, *m.Method.Type)
			require.NotNil(t, m.Method.Service)
			if i == 1 {
				require.Nil(t, m.Method.Method, "every other method: a keyed call never bypasses idemproxy")
			} else {
				require.NotNil(t, m.Method.Method, "the unary methods by name")
			}
			require.Len(t, m.Headers, 1)
			require.Equal(t, gwapiv1.GRPCHeaderMatchRegularExpression, *m.Headers[0].Type)
			require.Equal(t, ".*", m.Headers[0].Value, "any value: presence is what counts")
			matched = append(matched, strings.ToLower(string(m.Headers[0].Name)))
		}
		require.Empty(t, rule.Filters)
		require.Equal(t, keyless.Spec.Rules[0].BackendRefs, rule.BackendRefs)
		require.ElementsMatch(t, keyHeaders, matched)
	}

	require.Len(t, keyless.Spec.Rules, 1)
	require.Len(t, keyless.Spec.Rules[0].Matches, 1)
	m := keyless.Spec.Rules[0].Matches[0]
	require.Empty(t, m.Headers)
	require.Equal(t, keyed.Spec.Rules[1].Matches[0].Method.Service, m.Method.Service)
	require.Nil(t, m.Method.Method, "every method of the service")
	require.Equal(t, keyed.Spec.Hostnames, keyless.Spec.Hostnames)
	require.Equal(t, keyed.Spec.ParentRefs, keyless.Spec.ParentRefs)
	require.Equal(t, 60*time.Second, mustDuration(t, string(*eg.routes["payments"].Spec.Rules[0].Timeouts.Request)), "the HTTP routes' timeout; GRPCRoute has no timeouts field")
}

// TestEnvoyGateway_NoResponseTrailersToExtProc pins what
// docs/envoy-and-mesh.md says of Envoy Gateway v1.9: its extProc API has no
// trailer setting, and its translation sends response trailers to the
// processor only with the FullDuplexStreamed response body, which idemproxy
// does not use; so with the policy's Streamed body, response_trailer_mode
// is SKIP, unlike envoy.yaml's SEND. When a newer Envoy Gateway adds a
// field, this fails: use it.
func TestEnvoyGateway_NoResponseTrailersToExtProc(t *testing.T) {
	require.Equal(t, "SEND", dig(t, nativeExtProc(t), "processing_mode", "response_trailer_mode"))
	var fields []string
	typ := reflect.TypeFor[egv1a1.EnvoyExtensionPolicySpec]()
	jsonFields(typ, typ.Name(), map[reflect.Type]bool{}, &fields)
	// Each type once: the response's options are the request's type.
	require.True(t, slices.Contains(fields, "EnvoyExtensionPolicySpec.extProc.processingMode.request.body"), "the walk reaches the processing mode")
	for _, f := range fields {
		if strings.Contains(f, ".extProc.") {
			require.NotContains(t, strings.ToLower(f), "trailer", "Envoy Gateway's ext_proc can send trailers now: %s", f)
		}
	}
	eg := loadEnvoyGateway(t)
	require.Equal(t, egv1a1.StreamedExtProcBodyProcessingMode, *eg.policies[0].Spec.ExtProc[0].ProcessingMode.Response.Body)
}

// nativeReplayRoute is envoy.yaml's route for x-idemproxy-replay.
func nativeReplayRoute(t *testing.T) generic {
	t.Helper()
	hcm := dig(t, loadGeneric(t, "envoy", "envoy.yaml"), "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config")
	for _, r := range dig(t, hcm, "route_config", "virtual_hosts", "0", "routes").([]any) {
		hs, ok := r.(generic)["match"].(generic)["headers"].([]any)
		if ok && len(hs) == 1 && dig(t, hs[0], "name") == replayHeader {
			require.Equal(t, "idemproxy-replay", dig(t, r, "route", "cluster"))
			return r.(generic)
		}
	}
	require.FailNow(t, "envoy.yaml has no replay route")
	return nil
}

// nativeReplayPort is the port of envoy.yaml's idemproxy-replay cluster.
func nativeReplayPort(t *testing.T) int32 {
	t.Helper()
	for _, c := range dig(t, loadGeneric(t, "envoy", "envoy.yaml"), "static_resources", "clusters").([]any) {
		if dig(t, c, "name") == "idemproxy-replay" {
			return int32(dig(t, c, "load_assignment", "endpoints", "0", "lb_endpoints", "0", "endpoint", "address", "socket_address", "port_value").(float64))
		}
	}
	require.FailNow(t, "envoy.yaml has no idemproxy-replay cluster")
	return 0
}

// kustomizeNamespace is the namespace deploy/kubernetes renders into.
func kustomizeNamespace(t *testing.T) string {
	t.Helper()
	var kust struct {
		Namespace string `json:"namespace"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy", "kubernetes", "kustomization.yaml"), &kust))
	return kust.Namespace
}
