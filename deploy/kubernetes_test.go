package deploy

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// k8sObjects is deploy/kubernetes decoded into the official API types.
type k8sObjects struct {
	namespaces  []*corev1.Namespace
	configMaps  map[string]*corev1.ConfigMap
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	pdbs        map[string]*policyv1.PodDisruptionBudget
	netpols     map[string]*networkingv1.NetworkPolicy
	secrets     map[string]*corev1.Secret
}

// decodeK8s decodes every document strictly into its k8s.io/api type; a
// kind this folder is not expected to hold is an error.
func decodeK8s(t *testing.T, docs [][]byte) k8sObjects {
	t.Helper()
	o := k8sObjects{configMaps: map[string]*corev1.ConfigMap{}, deployments: map[string]*appsv1.Deployment{},
		services: map[string]*corev1.Service{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		netpols: map[string]*networkingv1.NetworkPolicy{}, secrets: map[string]*corev1.Secret{}}
	for _, doc := range docs {
		switch apiVersion, kind := typeOf(t, doc); apiVersion + " " + kind {
		case "v1 Namespace":
			var v corev1.Namespace
			decodeStrict(t, doc, &v)
			o.namespaces = append(o.namespaces, &v)
		case "v1 ConfigMap":
			var v corev1.ConfigMap
			decodeStrict(t, doc, &v)
			o.configMaps[v.Name] = &v
		case "apps/v1 Deployment":
			var v appsv1.Deployment
			decodeStrict(t, doc, &v)
			o.deployments[v.Name] = &v
		case "v1 Service":
			var v corev1.Service
			decodeStrict(t, doc, &v)
			o.services[v.Name] = &v
		case "policy/v1 PodDisruptionBudget":
			var v policyv1.PodDisruptionBudget
			decodeStrict(t, doc, &v)
			o.pdbs[v.Name] = &v
		case "networking.k8s.io/v1 NetworkPolicy":
			var v networkingv1.NetworkPolicy
			decodeStrict(t, doc, &v)
			o.netpols[v.Name] = &v
		case "v1 Secret":
			var v corev1.Secret
			decodeStrict(t, doc, &v)
			o.secrets[v.Name] = &v
		default:
			require.FailNow(t, "unexpected manifest", "%s %s", apiVersion, kind)
		}
	}
	return o
}

// manifestFiles are the YAML files of deploy/kubernetes besides the
// kustomization.
func manifestFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(repoPath("deploy", "kubernetes", "*.yaml"))
	require.NoError(t, err)
	return slices.DeleteFunc(files, func(f string) bool { return filepath.Base(f) == "kustomization.yaml" })
}

func TestKubernetes_Manifests(t *testing.T) {
	var docs [][]byte
	for _, f := range manifestFiles(t) {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		docs = append(docs, yamlDocs(t, raw)...)
	}
	o := decodeK8s(t, docs)
	for _, obj := range []interface{ GetNamespace() string }{o.configMaps["idemproxy"], o.deployments["idemproxy"], o.services["idemproxy"]} {
		require.Empty(t, obj.GetNamespace(), "the namespace comes from kustomization.yaml")
	}
	cm := o.configMaps["idemproxy"]
	dep := o.deployments["idemproxy"]
	require.NotNil(t, cm)
	require.NotNil(t, dep)
	pod := dep.Spec.Template.Spec
	require.Len(t, pod.Containers, 1)
	c := pod.Containers[0]

	t.Run("config comes from the ConfigMap and names real flags", func(t *testing.T) {
		require.Equal(t, []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}}}}, c.EnvFrom)
		known := idemproxyEnvVars(t)
		for k := range cm.Data {
			require.Contains(t, known, k, "idemproxy has no such environment variable")
		}
		require.Equal(t, ":50051", cm.Data["IDEMPROXY_GRPC_ADDR"])
		require.Equal(t, ":9090", cm.Data["IDEMPROXY_ADMIN_ADDR"])
		require.Equal(t, ":50052", cm.Data["IDEMPROXY_REPLAY_ADDR"], "the replay endpoint is on: gRPC replays need it")
		require.Equal(t, "redis://redis:6379/0", cm.Data["IDEMPROXY_REDIS_URL"])
		require.Equal(t, "standalone", cm.Data["IDEMPROXY_REDIS_MODE"])
		require.NotContains(t, cm.Data, "IDEMPROXY_REDIS_MIN_REPLICAS", "unset: idemproxy's default per topology (1 where Redis replicates)")
		raw, err := os.ReadFile(repoPath("deploy", "kubernetes", "configmap.yaml"))
		require.NoError(t, err)
		for _, mode := range []string{"cluster", "sentinel"} {
			require.Contains(t, string(raw), "#   IDEMPROXY_REDIS_MODE: "+mode, "the ConfigMap shows every topology")
		}
		require.Contains(t, o.services, "redis", "the demo Redis the ConfigMap points at")
	})
	t.Run("replicas, rollout and disruption budget", func(t *testing.T) {
		require.EqualValues(t, 2, *dep.Spec.Replicas)
		require.Equal(t, intstr.FromInt32(0), *dep.Spec.Strategy.RollingUpdate.MaxUnavailable)
		pdb := o.pdbs["idemproxy"]
		require.NotNil(t, pdb)
		require.Equal(t, intstr.FromInt32(1), *pdb.Spec.MinAvailable)
		require.Equal(t, dep.Spec.Selector, pdb.Spec.Selector)
		require.Equal(t, dep.Spec.Selector.MatchLabels, dep.Spec.Template.Labels)
	})
	t.Run("probes", func(t *testing.T) {
		ports := map[string]int32{}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
		require.Equal(t, map[string]int32{"grpc": 50051, "replay": 50052, "admin": 9090}, ports)
		require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
		require.Equal(t, intstr.FromString("admin"), c.ReadinessProbe.HTTPGet.Port)
		// Liveness must not follow Redis: restarting pods does not fix Redis.
		require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
		require.Equal(t, intstr.FromString("admin"), c.LivenessProbe.HTTPGet.Port)
		require.NotNil(t, c.StartupProbe.GRPC, "the gRPC health service is probed at start")
		require.Equal(t, ports["grpc"], c.StartupProbe.GRPC.Port)
	})
	t.Run("graceful termination outlasts the drain", func(t *testing.T) {
		grace := mustDuration(t, cm.Data["IDEMPROXY_SHUTDOWN_GRACE"])
		require.NotNil(t, c.Lifecycle.PreStop.Sleep, "preStop sleep lets endpoints drain before SIGTERM")
		preStop := c.Lifecycle.PreStop.Sleep.Seconds
		require.Positive(t, preStop)
		require.Greater(t, *pod.TerminationGracePeriodSeconds, preStop+int64(grace.Seconds()),
			"terminationGracePeriodSeconds must exceed preStop sleep + IDEMPROXY_SHUTDOWN_GRACE")
	})
	t.Run("resources and security", func(t *testing.T) {
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			require.Contains(t, c.Resources.Requests, name)
			require.Contains(t, c.Resources.Limits, name)
		}
		requireLockedDown(t, pod, c)
		// The image's USER (Dockerfile) is the pod's user.
		stages, _ := parseDockerfile(t)
		user, _ := instruction(stages, "idemproxy", "USER")
		uid, _, _ := strings.Cut(user, ":")
		require.Equal(t, uid, strconv.FormatInt(*pod.SecurityContext.RunAsUser, 10))
	})
	t.Run("service speaks gRPC", func(t *testing.T) {
		svc := o.services["idemproxy"]
		require.NotNil(t, svc)
		require.Equal(t, dep.Spec.Selector.MatchLabels, svc.Spec.Selector)
		grpc := svc.Spec.Ports[slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "grpc" })]
		require.EqualValues(t, 50051, grpc.Port)
		require.Equal(t, intstr.FromString("grpc"), grpc.TargetPort)
		require.NotNil(t, grpc.AppProtocol)
		require.Equal(t, "grpc", *grpc.AppProtocol, "Istio and Envoy Gateway need it to speak HTTP/2")
		replay := svc.Spec.Ports[slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "replay" })]
		require.EqualValues(t, 50052, replay.Port)
		require.Equal(t, intstr.FromString("replay"), replay.TargetPort)
		require.NotNil(t, replay.AppProtocol)
		require.Equal(t, "kubernetes.io/h2c", *replay.AppProtocol, "HTTP/2 cleartext: trailers stay trailers")
		require.Len(t, svc.Spec.Ports, 3)
	})
	t.Run("Envoy must authenticate: the token from a Secret, read-only", func(t *testing.T) {
		require.Equal(t, "/etc/idemproxy/auth/token", cm.Data["IDEMPROXY_AUTH_TOKEN_FILE"])
		require.Len(t, c.VolumeMounts, 1)
		require.Equal(t, "/etc/idemproxy/auth", c.VolumeMounts[0].MountPath)
		require.True(t, c.VolumeMounts[0].ReadOnly)
		require.Len(t, pod.Volumes, 1)
		require.Equal(t, c.VolumeMounts[0].Name, pod.Volumes[0].Name)
		require.Equal(t, "idemproxy-auth", pod.Volumes[0].Secret.SecretName)
	})
	t.Run("only labelled client pods reach the gRPC and replay ports", func(t *testing.T) {
		np := o.netpols["idemproxy"]
		require.NotNil(t, np)
		require.Equal(t, dep.Spec.Selector.MatchLabels, np.Spec.PodSelector.MatchLabels)
		require.Equal(t, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, np.Spec.PolicyTypes)
		byPort := map[int32]map[string]string{}
		for _, rule := range np.Spec.Ingress {
			require.Len(t, rule.From, 1)
			for _, p := range rule.Ports {
				byPort[p.Port.IntVal] = rule.From[0].PodSelector.MatchLabels
			}
		}
		require.Equal(t, map[int32]map[string]string{
			50051: {"idemproxy.io/client": "true"},
			50052: {"idemproxy.io/client": "true"},
			9090:  {"idemproxy.io/admin": "true"},
		}, byPort)
	})
	t.Run("demo redis is marked not for production", func(t *testing.T) {
		raw := string(readRepoFile(t, "deploy", "kubernetes", "redis-demo.yaml"))
		require.True(t, strings.HasPrefix(raw, "# NOT FOR PRODUCTION."))
		r := o.deployments["redis"]
		require.NotNil(t, r)
		require.Equal(t, "demo-only", r.Labels["app.kubernetes.io/component"])
		requireLockedDown(t, r.Spec.Template.Spec, r.Spec.Template.Spec.Containers[0])
	})
}

// requireLockedDown checks the restricted Pod Security Standard's demands
// and a read-only root filesystem.
func requireLockedDown(t *testing.T, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	require.True(t, *pod.SecurityContext.RunAsNonRoot)
	require.Positive(t, *pod.SecurityContext.RunAsUser)
	require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, pod.SecurityContext.SeccompProfile.Type)
	require.False(t, *pod.AutomountServiceAccountToken)
	sc := c.SecurityContext
	require.NotNil(t, sc, c.Name)
	require.False(t, *sc.AllowPrivilegeEscalation)
	require.True(t, *sc.ReadOnlyRootFilesystem)
	require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
	require.Empty(t, sc.Capabilities.Add)
}

// TestKubernetes_Kustomize renders the folder with the kustomize library (what
// `kubectl apply -k` runs) and decodes the result strictly again.
func TestKubernetes_Kustomize(t *testing.T) {
	// The operator makes auth-token (never committed); here a copy of the
	// folder gets one, as `openssl rand -hex 32 > auth-token` would.
	dir := t.TempDir()
	files, err := filepath.Glob(repoPath("deploy", "kubernetes", "*.yaml"))
	require.NoError(t, err)
	for _, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), readRepoFile(t, "deploy", "kubernetes", filepath.Base(f)), 0o600))
	}
	const token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "auth-token"), []byte(token+"\n"), 0o600))
	opts := krusty.MakeDefaultOptions()
	k := krusty.MakeKustomizer(opts)
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err)
	var kust types.Kustomization
	decodeStrict(t, readRepoFile(t, "deploy", "kubernetes", "kustomization.yaml"), &kust)

	t.Run("every manifest is listed", func(t *testing.T) {
		var listed []string
		for _, f := range manifestFiles(t) {
			listed = append(listed, filepath.Base(f))
		}
		require.ElementsMatch(t, listed, kust.Resources)
	})

	resources := resMap.Resources()
	// Namespace, ConfigMap, Secret, Deployment, Service, PDB, NetworkPolicy;
	// Redis Deployment and Service.
	require.Len(t, resources, 9)
	var docs [][]byte
	for _, r := range resources {
		y, err := r.AsYAML()
		require.NoError(t, err)
		docs = append(docs, y)
		if r.GetKind() != "Namespace" {
			require.Equal(t, kust.Namespace, r.GetNamespace(), "%s/%s", r.GetKind(), r.GetName())
		}
	}
	o := decodeK8s(t, docs)
	require.Len(t, o.namespaces, 1)
	require.Equal(t, kust.Namespace, o.namespaces[0].Name)
	require.Equal(t, "idemproxy", kust.Namespace, "the Istio and Envoy Gateway examples address idemproxy.idemproxy")
	require.Equal(t, "idemproxy/idemproxy:dev", o.deployments["idemproxy"].Spec.Template.Spec.Containers[0].Image)
	require.Len(t, o.secrets, 1)
	for name, sec := range o.secrets {
		require.True(t, strings.HasPrefix(name, "idemproxy-auth-"), "a content hash names it: %s", name)
		require.Equal(t, name, o.deployments["idemproxy"].Spec.Template.Spec.Volumes[0].Secret.SecretName,
			"kustomize points the Deployment at the generated Secret")
		require.Equal(t, token+"\n", string(sec.Data["token"]))
	}
}
