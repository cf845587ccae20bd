package deploy

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The EnvoyFilters' replay patches (the fourth and fifth): a client's own
// x-idemproxy-replay removed in the connection manager, and the replay
// route first in every virtual host. Istio is not run here: istioBootstrap
// applies the patches to a bootstrap the way Istio's EnvoyFilter code
// (pilot/pkg/networking/core/envoyfilter) applies them to the listeners and
// routes it generates, and a real Envoy runs the result.

// replayCluster is the outbound cluster Istio creates for the idemproxy
// Service's port replay.
func replayCluster(t *testing.T) string {
	t.Helper()
	var kust struct {
		Namespace string `json:"namespace"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy", "kubernetes", "kustomization.yaml"), &kust))
	return fmt.Sprintf("outbound|50052||idemproxy.%s.svc.cluster.local", kust.Namespace)
}

// replayHeaderPatch is the EnvoyFilter's fourth patch: the connection
// manager's early header mutations. It returns the merged typed_config.
func replayHeaderPatch(t *testing.T, ef *networkingv1alpha3.EnvoyFilter) generic {
	t.Helper()
	cp := ef.ConfigPatches[3]
	require.Equal(t, networkingv1alpha3.EnvoyFilter_NETWORK_FILTER, cp.ApplyTo)
	require.Equal(t, ef.ConfigPatches[0].Match.Context, cp.Match.Context, "the Envoy that runs idemproxy's filter")
	f := cp.Match.GetListener().GetFilterChain().GetFilter()
	require.Equal(t, "envoy.filters.network.http_connection_manager", f.GetName())
	require.Nil(t, f.GetSubFilter(), "the connection manager itself: it picks the route")
	require.Equal(t, networkingv1alpha3.EnvoyFilter_Patch_MERGE, cp.Patch.Operation)
	v := cp.Patch.Value.AsMap()
	require.Equal(t, f.GetName(), v["name"])
	return dig(t, v, "typed_config").(generic)
}

// replayRoutePatch is the EnvoyFilter's fifth patch: the replay route,
// inserted first in every virtual host.
func replayRoutePatch(t *testing.T, ef *networkingv1alpha3.EnvoyFilter) generic {
	t.Helper()
	cp := ef.ConfigPatches[4]
	require.Equal(t, networkingv1alpha3.EnvoyFilter_HTTP_ROUTE, cp.ApplyTo)
	require.Equal(t, ef.ConfigPatches[0].Match.Context, cp.Match.Context, "the Envoy that runs idemproxy's filter")
	require.Nil(t, cp.Match.GetRouteConfiguration(), "every virtual host, and no route to match: Istio puts it first")
	require.Equal(t, networkingv1alpha3.EnvoyFilter_Patch_INSERT_FIRST, cp.Patch.Operation)
	return cp.Patch.Value.AsMap()
}

// istioBootstrap is filterBootstrapChain with every patch of the
// EnvoyFilter applied as Istio applies it: the fence filter and filter
// (idemproxy's, possibly edited by the test) before the router; the
// attempt counts merged into each virtual host; the early header mutations
// merged into the connection manager (repeated fields append, as proto
// merge does); the replay route put first in each virtual host. Patches
// whose ApplyTo is in skip are left out (the fault tests).
func istioBootstrap(t *testing.T, ef *networkingv1alpha3.EnvoyFilter, filter generic,
	skip []networkingv1alpha3.EnvoyFilter_ApplyTo, clusters ...generic,
) generic {
	t.Helper()
	cfg := filterBootstrapChain([]generic{fenceFilter(t, ef), filter}, clusters...)
	hcm := dig(t, cfg, "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config").(generic)
	if !slices.Contains(skip, networkingv1alpha3.EnvoyFilter_NETWORK_FILTER) {
		for k, v := range replayHeaderPatch(t, ef) {
			if list, ok := v.([]any); ok {
				prev, _ := hcm[k].([]any)
				hcm[k] = append(prev, list...)
			} else if k != "@type" {
				hcm[k] = v
			}
		}
	}
	for _, vh := range dig(t, hcm, "route_config", "virtual_hosts").([]any) {
		vhost := vh.(generic)
		if !slices.Contains(skip, networkingv1alpha3.EnvoyFilter_VIRTUAL_HOST) {
			for k, v := range attemptCountPatch(t, ef) {
				vhost[k] = v
			}
		}
		if !slices.Contains(skip, networkingv1alpha3.EnvoyFilter_HTTP_ROUTE) {
			vhost["routes"] = append([]any{replayRoutePatch(t, ef)}, vhost["routes"].([]any)...)
		}
	}
	return cfg
}

// TestIstioEnvoyFilter_ReplayPatches checks the replay patches against
// envoy/envoy.yaml, which the end-to-end tests in envoy/ run: the same
// header removal before routing, the same replay route (match, timeout,
// retries) to the outbound cluster of the Service's port replay. Envoy
// itself parses them in TestIstioEnvoyFilter_Validate.
func TestIstioEnvoyFilter_ReplayPatches(t *testing.T) {
	nativeHCM := dig(t, loadGeneric(t, "envoy", "envoy.yaml"), "static_resources", "listeners", "0", "filter_chains", "0", "filters", "0", "typed_config")
	nativeRoute := dig(t, nativeHCM, "route_config", "virtual_hosts", "0", "routes", "0").(generic)
	require.Equal(t, "idemproxy-replay", dig(t, nativeRoute, "route", "cluster"), "envoy.yaml's first route is the replay route")
	o := decodeK8s(t, yamlDocs(t, readRepoFile(t, "deploy", "kubernetes", "service.yaml")))
	ports := o.services["idemproxy"].Spec.Ports
	replayPort := ports[slices.IndexFunc(ports, func(p corev1.ServicePort) bool { return p.Name == "replay" })]
	require.Equal(t, fmt.Sprintf("outbound|%d||idemproxy.idemproxy.svc.cluster.local", replayPort.Port), replayCluster(t))
	for file := range istioFilters {
		t.Run(file, func(t *testing.T) {
			ef, _ := loadEnvoyFilter(t, file)
			hcm := replayHeaderPatch(t, ef)
			require.Equal(t, dig(t, nativeHCM, "early_header_mutation_extensions"), hcm["early_header_mutation_extensions"])
			require.Len(t, hcm, 2, "@type and the early header mutations, nothing else of Istio's connection manager")

			r := replayRoutePatch(t, ef)
			require.Equal(t, nativeRoute["match"], r["match"])
			mine := deepCopy(t, r["route"]).(generic)
			require.Equal(t, replayCluster(t), mine["cluster"])
			native := deepCopy(t, nativeRoute["route"]).(generic)
			delete(mine, "cluster")
			delete(native, "cluster")
			require.Equal(t, native, mine, "envoy.yaml's timeout and retries")
			require.NotContains(t, r, "request_headers_to_add", "the mesh authenticates; the token is the commented option")
		})
	}
}
