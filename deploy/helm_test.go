package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// fullValues turns on everything the chart can do.
func fullValues(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(`
image: { repository: registry.example/idemproxy, tag: v1.2.3 }
redis:
  mode: sentinel
  urlSecret: { name: payments-redis, key: url }
  caSecret: { name: payments-redis-ca }
  minReplicas: 1
  replicaTimeout: 50ms
auth: { existingSecret: envoy-ext-proc-token }
tls: { enabled: true, secretName: idemproxy-tls, clientCASecret: { name: envoy-client-ca } }
adminToken: { existingSecret: idemproxy-admin }
encryption: { existingSecret: idemproxy-keys }
policy: { retention: 48h, scopeHeaders: x-tenant-id, methods: "POST,PATCH", onUnknown: hold }
extraEnv:
- { name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://otel-collector.observability:4317" }
- { name: OTEL_EXPORTER_OTLP_PROTOCOL, value: grpc }
autoscaling: { enabled: true, minReplicas: 3, maxReplicas: 12 }
networkPolicy: { enabled: true }
serviceMonitor: { enabled: true, labels: { release: kube-prometheus-stack } }
prometheusRule: { enabled: true, labels: { release: kube-prometheus-stack } }
`), &v))
	return v
}

func TestHelmChart_lint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(chartKubeVersion)
	require.NoError(t, err)
	for name, vals := range map[string]map[string]any{"default values": nil, "full values": fullValues(t)} {
		t.Run(name, func(t *testing.T) {
			l := action.NewLint()
			l.Strict, l.Namespace, l.KubeVersion = true, "payments", kv
			res := l.Run([]string{chartPath}, vals)
			for _, m := range res.Messages {
				require.Less(t, m.Severity, support.WarningSev, "helm lint: %s", m)
			}
			require.Empty(t, res.Errors)
		})
	}
}

func TestHelmChart_defaults(t *testing.T) {
	r := renderChart(t, nil)
	require.Len(t, r.deployments, 1)
	require.Empty(t, r.hpas)
	require.Empty(t, r.netpols)
	require.Empty(t, r.monitors)
	require.Empty(t, r.rules)
	dep := r.deployments["idemproxy"]
	require.NotNil(t, dep, "release idemproxy gives objects named idemproxy")
	c := dep.Spec.Template.Spec.Containers[0]
	require.Equal(t, "idemproxy/idemproxy:dev", c.Image, "the tag defaults to the chart's appVersion")

	t.Run("the Deployment is deploy/kubernetes's", func(t *testing.T) {
		requireSameDeployment(t, k8sDeployment(t), dep)
	})
	t.Run("the settings are deploy/kubernetes's", func(t *testing.T) {
		cm := r.configMaps["idemproxy"]
		require.NotNil(t, cm)
		env := envOf(c)
		for k, v := range k8sConfigMap(t).Data {
			switch e, inEnv := env[k]; {
			case k == "IDEMPROXY_REDIS_URL": // the demo Redis there, a placeholder here
			case inEnv: // the chart sets the file paths of its Secrets beside their mounts
				require.Equal(t, v, e.Value, k)
			default:
				require.Equal(t, v, cm.Data[k], k)
			}
		}
		require.NotContains(t, cm.Data, "IDEMPROXY_REDIS_MIN_REPLICAS", "unset: idemproxy's default per topology")
		requireKnownEnv(t, r)
	})
	t.Run("the Go runtime settings are deploy/kubernetes's", func(t *testing.T) {
		k8s := envOf(k8sDeployment(t).Spec.Template.Spec.Containers[0])
		for _, name := range []string{"GOGC", "GOMEMLIMIT"} {
			require.NotEmpty(t, k8s[name].Value, name)
			require.Equal(t, k8s[name].Value, envOf(c)[name].Value, name)
		}
	})
	t.Run("Envoy's token is on, from a generated Secret mounted as a file", func(t *testing.T) {
		sec := r.secrets["idemproxy-auth"]
		require.NotNil(t, sec)
		require.Len(t, sec.Data["token"], 40)
		require.Equal(t, "/etc/idemproxy/auth/token", envOf(c)["IDEMPROXY_AUTH_TOKEN_FILE"].Value)
		requireMounted(t, dep, "idemproxy-auth", "/etc/idemproxy/auth")
		require.Equal(t, "false", r.configMaps["idemproxy"].Data["IDEMPROXY_ALLOW_UNAUTHENTICATED"])
	})
	t.Run("the replay endpoint is on, on deploy/kubernetes's port", func(t *testing.T) {
		require.Equal(t, ":50052", r.configMaps["idemproxy"].Data["IDEMPROXY_REPLAY_ADDR"])
		svc := r.services["idemproxy"]
		require.NotNil(t, svc)
		var replay *corev1.ServicePort
		for i, p := range svc.Spec.Ports {
			if p.Name == "replay" {
				replay = &svc.Spec.Ports[i]
			}
		}
		require.NotNil(t, replay, "the Service's port replay")
		require.EqualValues(t, 50052, replay.Port)
		require.Equal(t, "kubernetes.io/h2c", *replay.AppProtocol)
		require.Contains(t, r.notes, "name: idemproxy-replay")
		require.Contains(t, r.notes, "port_value: 50052")
	})
	t.Run("NOTES print the Envoy snippet", func(t *testing.T) {
		for _, want := range []string{
			"name: envoy.filters.http.ext_proc",
			"socket_address: { address: idemproxy.payments.svc.cluster.local, port_value: 50051 }",
			"- key: authorization",
			`value: "Bearer <token>"`,
			"kubectl -n payments get secret idemproxy-auth -o jsonpath='{.data.token}' | base64 -d",
			`untyped: ["envoy.filters.http.ext_proc"]`,
			"request_body_mode: BUFFERED",
		} {
			require.Contains(t, r.notes, want)
		}
		validateEnvoy(t, envoyBinary(t), writeTempFile(t, "notes-envoy.yaml", notesEnvoyConfig(t, r.notes)))
	})
}

func TestHelmChart_fullValues(t *testing.T) {
	r := renderChart(t, fullValues(t))
	dep := r.deployments["idemproxy"]
	require.NotNil(t, dep)
	c := dep.Spec.Template.Spec.Containers[0]
	env := envOf(c)
	requireKnownEnv(t, r)
	require.Empty(t, r.secrets, "every secret is an existing one")
	require.Nil(t, dep.Spec.Replicas, "the HPA owns the replica count")
	require.Equal(t, "registry.example/idemproxy:v1.2.3", c.Image)

	t.Run("secrets come from Secrets, as files or a secret reference", func(t *testing.T) {
		require.Equal(t, "payments-redis", env["IDEMPROXY_REDIS_URL"].ValueFrom.SecretKeyRef.Name)
		require.Equal(t, "url", env["IDEMPROXY_REDIS_URL"].ValueFrom.SecretKeyRef.Key)
		require.NotContains(t, r.configMaps["idemproxy"].Data, "IDEMPROXY_REDIS_URL")
		for secret, file := range map[string]string{
			"envoy-ext-proc-token": "IDEMPROXY_AUTH_TOKEN_FILE=/etc/idemproxy/auth/token",
			"idemproxy-admin":      "IDEMPROXY_ADMIN_TOKEN_FILE=/etc/idemproxy/admin-token/token",
			"idemproxy-keys":       "IDEMPROXY_ENCRYPTION_KEYS_FILE=/etc/idemproxy/encryption/keys",
			"payments-redis-ca":    "IDEMPROXY_REDIS_CA=/etc/idemproxy/redis-ca/ca.crt",
			"idemproxy-tls":        "IDEMPROXY_TLS_CERT=/etc/idemproxy/tls/tls.crt",
			"envoy-client-ca":      "IDEMPROXY_TLS_CLIENT_CA=/etc/idemproxy/tls-client-ca/ca.crt",
		} {
			name, path, _ := strings.Cut(file, "=")
			require.Equal(t, path, env[name].Value, name)
			dir := path[:strings.LastIndex(path, "/")]
			requireMounted(t, dep, secret, dir)
		}
		require.Equal(t, "/etc/idemproxy/tls/tls.key", env["IDEMPROXY_TLS_KEY"].Value)
	})
	t.Run("settings", func(t *testing.T) {
		cm := r.configMaps["idemproxy"].Data
		require.Equal(t, "sentinel", cm["IDEMPROXY_REDIS_MODE"])
		require.Equal(t, "1", cm["IDEMPROXY_REDIS_MIN_REPLICAS"])
		require.Equal(t, "48h", cm["IDEMPROXY_RETENTION"])
		require.Equal(t, "x-tenant-id", cm["IDEMPROXY_SCOPE_HEADERS"])
		require.Equal(t, "grpc", env["OTEL_EXPORTER_OTLP_PROTOCOL"].Value)
		require.NotNil(t, c.StartupProbe.HTTPGet, "with TLS the kubelet's plaintext gRPC probe cannot start it")
	})
	t.Run("autoscaling, network policy and the Prometheus Operator", func(t *testing.T) {
		hpa := r.hpas["idemproxy"]
		require.Equal(t, "idemproxy", hpa.Spec.ScaleTargetRef.Name)
		require.EqualValues(t, 3, *hpa.Spec.MinReplicas)
		np := r.netpols["idemproxy"]
		require.Equal(t, dep.Spec.Selector.MatchLabels, np.Spec.PodSelector.MatchLabels)
		require.Equal(t, "grpc", np.Spec.Ingress[0].Ports[0].Port.String())
		require.Equal(t, "replay", np.Spec.Ingress[0].Ports[1].Port.String(), "the replay port admits the same pods")
		sm := r.monitors["idemproxy"]
		require.Equal(t, r.services["idemproxy"].Labels["app.kubernetes.io/instance"], sm.Spec.Selector.MatchLabels["app.kubernetes.io/instance"])
		require.Equal(t, "http-admin", sm.Spec.Endpoints[0].Port)
		require.Equal(t, "kube-prometheus-stack", sm.Labels["release"])
		var shipped ruleFile
		require.NoError(t, yaml.UnmarshalStrict(readRepoFile(t, "deploy", "prometheus", "idemproxy-rules.yaml"), &shipped))
		pr := r.rules["idemproxy"]
		require.Len(t, pr.Spec.Groups, len(shipped.Groups))
		for i, g := range shipped.Groups {
			require.Len(t, pr.Spec.Groups[i].Rules, len(g.Rules), g.Name)
			for j, rule := range g.Rules {
				require.Equal(t, rule.Expr, pr.Spec.Groups[i].Rules[j].Expr.String())
			}
		}
	})
	t.Run("NOTES tell Envoy to speak TLS", func(t *testing.T) {
		require.Contains(t, r.notes, "envoy.transport_sockets.tls")
		require.Contains(t, r.notes, "get secret envoy-ext-proc-token")
		validateEnvoy(t, envoyBinary(t), writeTempFile(t, "notes-envoy.yaml", notesEnvoyConfig(t, r.notes)))
	})
}

// TestHelmChart_replayOff: replay.enabled=false renders no replay
// endpoint, port or Envoy cluster.
func TestHelmChart_replayOff(t *testing.T) {
	r := renderChart(t, map[string]any{"replay": map[string]any{"enabled": false}, "networkPolicy": map[string]any{"enabled": true}})
	require.NotContains(t, r.configMaps["idemproxy"].Data, "IDEMPROXY_REPLAY_ADDR")
	for _, p := range r.deployments["idemproxy"].Spec.Template.Spec.Containers[0].Ports {
		require.NotEqual(t, "replay", p.Name)
	}
	for _, p := range r.services["idemproxy"].Spec.Ports {
		require.NotEqual(t, "replay", p.Name)
	}
	require.Len(t, r.netpols["idemproxy"].Spec.Ingress[0].Ports, 1)
	require.NotContains(t, r.notes, "idemproxy-replay")
	validateEnvoy(t, envoyBinary(t), writeTempFile(t, "notes-envoy.yaml", notesEnvoyConfig(t, r.notes)))
}

// TestHelmChart_rulesAreTheShippedOnes: the chart carries a copy of
// deploy/prometheus/idemproxy-rules.yaml (Helm reads files inside the chart
// only); it must not drift.
func TestHelmChart_rulesAreTheShippedOnes(t *testing.T) {
	require.Equal(t, string(readRepoFile(t, "deploy", "prometheus", "idemproxy-rules.yaml")),
		string(readRepoFile(t, "deploy", "helm", "idemproxy", "files", "idemproxy-rules.yaml")),
		"cp deploy/prometheus/idemproxy-rules.yaml deploy/helm/idemproxy/files/")
}

// requireKnownEnv: every variable the chart sets is one idemproxy reads
// or OpenTelemetry's, or the Go runtime's.
func requireKnownEnv(t *testing.T, r rendered) {
	t.Helper()
	known := knownEnv(t)
	for k := range r.configMaps["idemproxy"].Data {
		require.True(t, known[k], "idemproxy has no variable %s", k)
	}
	for _, e := range r.deployments["idemproxy"].Spec.Template.Spec.Containers[0].Env {
		require.True(t, known[e.Name] || isOTEL(e.Name) || isGoRuntime(e.Name), "idemproxy has no variable %s", e.Name)
	}
}

func requireMounted(t *testing.T, dep *appsv1.Deployment, secret, dir string) {
	t.Helper()
	pod := dep.Spec.Template.Spec
	vol := ""
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			vol = v.Name
		}
	}
	require.NotEmpty(t, vol, "no volume of Secret %s", secret)
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.Name == vol {
			require.Equal(t, dir, m.MountPath)
			require.True(t, m.ReadOnly)
			return
		}
	}
	require.Fail(t, "not mounted", "Secret %s", secret)
}

func k8sDeployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	decodeStrict(t, readRepoFile(t, "deploy", "kubernetes", "deployment.yaml"), &d)
	return &d
}

func k8sConfigMap(t *testing.T) *corev1.ConfigMap {
	t.Helper()
	var c corev1.ConfigMap
	decodeStrict(t, readRepoFile(t, "deploy", "kubernetes", "configmap.yaml"), &c)
	return &c
}

// requireSameDeployment compares the two Deployments with what differs by
// design blanked out: names and labels (Helm's release labels), the image,
// where settings come from (ConfigMap name, Secret files) and the config
// checksum.
func requireSameDeployment(t *testing.T, k8s, chart *appsv1.Deployment) {
	t.Helper()
	norm := func(d *appsv1.Deployment) appsv1.DeploymentSpec {
		s := *d.Spec.DeepCopy()
		s.Selector = nil
		s.Template.ObjectMeta = *k8s.Spec.Template.ObjectMeta.DeepCopy()
		s.Template.Spec.Volumes = nil
		for i := range s.Template.Spec.TopologySpreadConstraints {
			s.Template.Spec.TopologySpreadConstraints[i].LabelSelector = nil
		}
		c := &s.Template.Spec.Containers[0]
		c.Image, c.EnvFrom, c.Env, c.VolumeMounts = "", nil, nil, nil
		return s
	}
	require.Equal(t, norm(k8s), norm(chart))
	// What was blanked still agrees in substance.
	require.Equal(t, "idemproxy", chart.Spec.Selector.MatchLabels["app.kubernetes.io/name"])
	require.Equal(t, chart.Spec.Selector.MatchLabels, chart.Spec.Template.Labels)
	require.Len(t, chart.Spec.Template.Spec.Containers[0].EnvFrom, 1)
}

func writeTempFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// TestHelmChart_defaultsAreIdemproxys: every setting the chart's default
// values pass to idemproxy is idemproxy's own default (docs/configuration.md,
// generated from the flags), but the addresses and files of a deployment:
// a chart default that differs would be a weaker setting nobody chose
// (the chart once stored and replayed 5xx by default, which may run twice).
func TestHelmChart_defaultsAreIdemproxys(t *testing.T) {
	defaults := map[string]string{}
	for _, line := range strings.Split(string(readRepoFile(t, "docs", "configuration.md")), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(strings.TrimSpace(cells[2]), "`IDEMPROXY_") {
			continue
		}
		env := strings.Trim(strings.TrimSpace(cells[2]), "`")
		defaults[env] = strings.Trim(strings.TrimSpace(cells[3]), "`")
	}
	require.NotEmpty(t, defaults)
	deployment := map[string]bool{"IDEMPROXY_REDIS_URL": true, "IDEMPROXY_AUTH_TOKEN_FILE": true, "IDEMPROXY_REPLAY_ADDR": true}
	same := func(a, b string) bool {
		if strings.EqualFold(a, b) {
			return true
		}
		da, errA := time.ParseDuration(a)
		db, errB := time.ParseDuration(b)
		return errA == nil && errB == nil && da == db
	}
	cm := renderChart(t, nil).configMaps["idemproxy"]
	require.NotNil(t, cm)
	for env, v := range cm.Data {
		want, ok := defaults[env]
		if !ok || deployment[env] {
			continue
		}
		if want == "(none)" {
			want = ""
		}
		require.True(t, same(v, want), "%s: the chart's default %q is not idemproxy's %q", env, v, want)
	}
}
