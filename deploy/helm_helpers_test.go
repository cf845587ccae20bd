package deploy

import (
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
)

// chartPath is the Helm chart, seen from the deploy module.
var chartPath = repoPath("deploy", "helm", "idemproxy")

// chartKubeVersion is the oldest Kubernetes the chart declares (the preStop
// sleep action needs 1.30).
const chartKubeVersion = "v1.30.0"

// rendered is one chart rendering, decoded strictly into the API types.
type rendered struct {
	notes       string
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	pdbs        map[string]*policyv1.PodDisruptionBudget
	hpas        map[string]*autoscalingv2.HorizontalPodAutoscaler
	netpols     map[string]*networkingv1.NetworkPolicy
	monitors    map[string]*monitoringv1.ServiceMonitor
	rules       map[string]*monitoringv1.PrometheusRule
}

// renderChart renders the chart as `helm template` does (the Helm SDK's
// client-only install) into namespace payments, release idemproxy.
func renderChart(t *testing.T, vals map[string]any) rendered {
	t.Helper()
	chrt, err := loader.Load(chartPath)
	require.NoError(t, err)
	inst := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	inst.DryRun, inst.ClientOnly, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = "idemproxy", "payments"
	kv, err := chartutil.ParseKubeVersion(chartKubeVersion)
	require.NoError(t, err)
	inst.KubeVersion = kv
	rel, err := inst.Run(chrt, vals)
	require.NoError(t, err)
	require.Empty(t, rel.Hooks, "the chart has no hooks")
	require.NotRegexp(t, `(?m)^[ \t]+$`, rel.Manifest, "no whitespace-only lines: a template's dashes are off")
	return decodeRendered(t, rel.Manifest, rel.Info.Notes)
}

func decodeRendered(t *testing.T, manifest, notes string) rendered {
	t.Helper()
	r := rendered{notes: notes, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		netpols: map[string]*networkingv1.NetworkPolicy{}, monitors: map[string]*monitoringv1.ServiceMonitor{},
		rules: map[string]*monitoringv1.PrometheusRule{}}
	docs := yamlDocs(t, []byte(manifest))
	require.NotEmpty(t, docs)
	for _, doc := range docs {
		apiVersion, kind := typeOf(t, doc)
		switch apiVersion + " " + kind {
		case "v1 ConfigMap":
			decodeInto(t, doc, r.configMaps)
		case "v1 Secret":
			decodeInto(t, doc, r.secrets)
		case "apps/v1 Deployment":
			decodeInto(t, doc, r.deployments)
		case "v1 Service":
			decodeInto(t, doc, r.services)
		case "policy/v1 PodDisruptionBudget":
			decodeInto(t, doc, r.pdbs)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			decodeInto(t, doc, r.hpas)
		case "networking.k8s.io/v1 NetworkPolicy":
			decodeInto(t, doc, r.netpols)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			decodeInto(t, doc, r.monitors)
		case "monitoring.coreos.com/v1 PrometheusRule":
			decodeInto(t, doc, r.rules)
		default:
			require.FailNow(t, "unexpected object rendered", "%s %s", apiVersion, kind)
		}
	}
	return r
}

// named is what every decoded object has.
type named interface{ GetName() string }

// decodeInto decodes doc strictly into a new *T and files it by name.
func decodeInto[T any, PT interface {
	*T
	named
}](t *testing.T, doc []byte, into map[string]PT) {
	t.Helper()
	v := PT(new(T))
	decodeStrict(t, doc, v)
	require.NotContains(t, into, v.GetName(), "two objects of one kind named %s", v.GetName())
	into[v.GetName()] = v
}

// envOf maps a container's env entries by name.
func envOf(c corev1.Container) map[string]corev1.EnvVar {
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		out[e.Name] = e
	}
	return out
}

// knownEnv is every variable idemproxy reads.
func knownEnv(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{}
	for _, v := range idemproxyEnvVars(t) {
		known[v] = true
	}
	return known
}

// isOTEL reports an OpenTelemetry variable, read by the SDK, not a flag.
func isOTEL(name string) bool { return strings.HasPrefix(name, "OTEL_") }

// isGoRuntime reports a variable the Go runtime reads (GOGC, GOMEMLIMIT).
func isGoRuntime(name string) bool { return name == "GOGC" || name == "GOMEMLIMIT" }

// notesEnvoyConfig wraps the filter and cluster snippet NOTES.txt prints
// into a bootstrap, for `envoy --mode validate`.
func notesEnvoyConfig(t *testing.T, notes string) string {
	t.Helper()
	_, rest, ok := strings.Cut(notes, "\n  http_filters:\n")
	require.True(t, ok, "NOTES have no http_filters")
	filterBlock, rest, ok := strings.Cut(rest, "\n  clusters:\n")
	require.True(t, ok, "NOTES have no clusters")
	clusterBlock, _, _ := strings.Cut(rest, "\n\n")
	var hcm strings.Builder
	for _, line := range strings.Split("  http_filters:\n"+filterBlock, "\n") {
		hcm.WriteString("        " + line + "\n")
	}
	return `static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: idemproxy } }] }
` + hcm.String() + "  clusters:\n" + clusterBlock + "\n"
}
