//go:build egtranslate

package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

// Envoy Gateway's own translation of deploy/envoy-gateway, run by its
// egctl (`egctl x translate`, the controller's translator without a
// cluster) and turned into a static Envoy bootstrap: the config a real
// Envoy Gateway would push over xDS, with its endpoints replaced by this
// test's processes.

// egctlEnv names the egctl binary the translation tests run; they fail
// without it. They build only with -tags egtranslate (make test does not
// run them: building egctl takes about 13 minutes). Build it (once, several minutes) with
//
//	GOBIN=$PWD/bin go install github.com/envoyproxy/gateway/cmd/egctl@v1.9.1
const egctlEnv = "EGCTL"

// egFixture is what the manifests assume exists: the GatewayClass, the
// Gateway eg (listener on port), the two namespaces and the Services, each
// with a cluster IP that egxds maps to a local address.
func egFixture(port int) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: eg}
spec: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: payments}
---
apiVersion: v1
kind: Namespace
metadata: {name: idemproxy}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: eg, namespace: payments}
spec:
  gatewayClassName: eg
  listeners:
  - {name: http, protocol: HTTP, port: %d, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: payments}
spec:
  clusterIP: 10.0.0.10
  ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: payments-grpc, namespace: payments}
spec:
  clusterIP: 10.0.0.11
  ports: [{name: grpc, port: 9000, protocol: TCP, appProtocol: grpc}]
`, port)
}

// egUpstreams maps the fixture's and deploy/kubernetes' cluster IP:port to
// where this test's processes listen.
type egUpstreams map[string]string

// egTranslate runs egctl on the fixture, the idemproxy Service of
// deploy/kubernetes (given a cluster IP) and the manifests (files of
// deploy/envoy-gateway, edited by edits), and returns the xDS config dumps.
func egTranslate(t *testing.T, egctl string, port int, files []string, edits [][2]string) []any {
	t.Helper()
	var in strings.Builder
	in.WriteString(egFixture(port))
	svc := string(readRepoFile(t, "deploy", "kubernetes", "service.yaml"))
	svc = strings.Replace(svc, "metadata:\n  name: idemproxy\n", "metadata:\n  name: idemproxy\n  namespace: "+kustomizeNamespace(t)+"\n", 1)
	svc = strings.Replace(svc, "spec:\n", "spec:\n  clusterIP: 10.0.0.12\n", 1)
	in.WriteString("---\n" + svc)
	for _, f := range files {
		in.WriteString("---\n" + string(readRepoFile(t, "deploy", "envoy-gateway", f)))
	}
	text := in.String()
	for _, e := range edits {
		require.Contains(t, text, e[0])
		text = strings.ReplaceAll(text, e[0], e[1])
	}
	path := filepath.Join(t.TempDir(), "input.yaml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	out, err := exec.Command(egctl, "x", "translate", "--from", "gateway-api", "--to", "xds", "-t", "all", "-f", path).Output()
	require.NoError(t, err, "egctl x translate")
	var dump struct {
		XDS map[string]struct {
			Configs []any `json:"configs"`
		} `json:"xds"`
	}
	require.NoError(t, yaml.Unmarshal(out, &dump))
	gw, ok := dump.XDS["payments/eg"]
	require.True(t, ok, "no xDS for the Gateway payments/eg")
	return gw.Configs
}

// egDump finds the config dump of type kind ("RoutesConfigDump"...) and
// returns its list field.
func egDump(t *testing.T, configs []any, kind, field string) []any {
	t.Helper()
	for _, c := range configs {
		m := c.(generic)
		if strings.HasSuffix(m["@type"].(string), "."+kind) {
			return m[field].([]any)
		}
	}
	require.FailNow(t, "no "+kind)
	return nil
}

// egRoutes is the translated virtual host's routes, in Envoy's order.
func egRoutes(t *testing.T, configs []any) []generic {
	t.Helper()
	rcs := egDump(t, configs, "RoutesConfigDump", "dynamicRouteConfigs")
	require.Len(t, rcs, 1)
	vhs := dig(t, rcs[0], "routeConfig", "virtualHosts").([]any)
	require.Len(t, vhs, 1)
	var out []generic
	for _, r := range dig(t, vhs[0], "routes").([]any) {
		out = append(out, r.(generic))
	}
	return out
}

// egHCM is the Gateway listener's HTTP connection manager.
func egHCM(t *testing.T, configs []any) generic {
	t.Helper()
	return dig(t, egListener(t, configs), "defaultFilterChain", "filters", "0", "typedConfig").(generic)
}

// egListener is the Gateway's listener (Envoy Gateway adds a readiness
// listener of its own, left out here).
func egListener(t *testing.T, configs []any) generic {
	t.Helper()
	for _, l := range egDump(t, configs, "ListenersConfigDump", "dynamicListeners") {
		if listener := dig(t, l, "activeState", "listener").(generic); listener["name"] == "payments/eg/http" {
			return listener
		}
	}
	require.FailNow(t, "no listener payments/eg/http")
	return nil
}

// egBootstrap writes a static Envoy bootstrap of the translation: its
// Gateway listener with the route config inline, its clusters with their
// endpoints mapped by up, and an admin port.
func egBootstrap(t *testing.T, configs []any, up egUpstreams, admin int) string {
	t.Helper()
	assignments := map[string]generic{}
	for _, e := range egDump(t, configs, "EndpointsConfigDump", "dynamicEndpointConfigs") {
		la := dig(t, e, "endpointConfig").(generic)
		delete(la, "@type")
		for _, loc := range la["endpoints"].([]any) {
			for _, lb := range dig(t, loc, "lbEndpoints").([]any) {
				sa := dig(t, lb, "endpoint", "address", "socketAddress").(generic)
				to, ok := up[fmt.Sprintf("%v:%v", sa["address"], sa["portValue"])]
				require.True(t, ok, "an endpoint no process stands for: %v", sa)
				host, port, err := net.SplitHostPort(to)
				require.NoError(t, err)
				n, err := strconv.Atoi(port)
				require.NoError(t, err)
				sa["address"], sa["portValue"] = host, n
			}
		}
		assignments[la["clusterName"].(string)] = la
	}
	var clusters []any
	for _, c := range egDump(t, configs, "ClustersConfigDump", "dynamicActiveClusters") {
		cl := dig(t, c, "cluster").(generic)
		delete(cl, "@type")
		delete(cl, "edsClusterConfig")
		cl["type"] = "STATIC"
		cl["loadAssignment"] = assignments[cl["name"].(string)]
		clusters = append(clusters, cl)
	}
	routes := egDump(t, configs, "RoutesConfigDump", "dynamicRouteConfigs")
	hcm := egHCM(t, configs)
	delete(hcm, "rds")
	rc := dig(t, routes[0], "routeConfig").(generic)
	delete(rc, "@type")
	hcm["routeConfig"] = rc
	listener := egListener(t, configs) // hcm is part of it
	delete(listener, "@type")
	boot := generic{
		"admin":           generic{"address": generic{"socketAddress": generic{"address": "127.0.0.1", "portValue": admin}}},
		"staticResources": generic{"listeners": []any{listener}, "clusters": clusters},
	}
	b, err := json.Marshal(boot)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "eg-envoy.json")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return path
}
