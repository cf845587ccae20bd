package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// envoyBinary is the pinned Envoy, found as every test of the repository
// finds it (internal/testenv); skipped under -short.
func envoyBinary(t *testing.T) string {
	t.Helper()
	return testenv.EnvoyBin(t)
}

// validateEnvoy runs `envoy --mode validate`, the authoritative check.
func validateEnvoy(t *testing.T, bin, path string) {
	t.Helper()
	testenv.ValidateEnvoy(t, bin, path)
}

func TestEnvoyCompose_Validate(t *testing.T) {
	t.Parallel()
	validateEnvoy(t, envoyBinary(t), repoPath("envoy", "envoy-compose.yaml"))
}

// TestEnvoyCompose_SameAsEnvoyYAML checks that envoy-compose.yaml differs
// from envoy.yaml, which the end-to-end tests run traffic through, only in
// where things are: the admin address and the clusters' endpoints.
func TestEnvoyCompose_SameAsEnvoyYAML(t *testing.T) {
	native := loadGeneric(t, "envoy", "envoy.yaml")
	compose := loadGeneric(t, "envoy", "envoy-compose.yaml")

	admin := dig(t, compose, "admin", "address", "socket_address").(generic)
	require.Equal(t, "0.0.0.0", admin["address"], "admin must be reachable through the published port")
	admin["address"] = "127.0.0.1"
	for _, c := range dig(t, compose, "static_resources", "clusters").([]any) {
		cluster := c.(generic)
		require.Equal(t, "STRICT_DNS", cluster["type"], cluster["name"])
		require.Equal(t, "V4_ONLY", cluster["dns_lookup_family"], cluster["name"])
		cluster["type"] = "STATIC"
		delete(cluster, "dns_lookup_family")
		sa := dig(t, cluster, "load_assignment", "endpoints", "0", "lb_endpoints", "0", "endpoint", "address", "socket_address").(generic)
		want := map[string]string{"idemproxy": "idemproxy:50051", "idemproxy-replay": "idemproxy:50052", "backend": "toxiproxy:8082", "grpc-backend": "backend:8090"}[cluster["name"].(string)]
		require.Equal(t, want, fmt.Sprintf("%v:%v", sa["address"], sa["port_value"]), cluster["name"])
		native := map[string]float64{"idemproxy": 50051, "idemproxy-replay": 50052, "backend": 8081, "grpc-backend": 8090}[cluster["name"].(string)]
		sa["address"], sa["port_value"] = "127.0.0.1", native
	}
	require.Equal(t, native, compose, "envoy-compose.yaml must stay envoy.yaml with compose addresses")
}

// runEnvoy starts Envoy on a bootstrap whose admin and listener bind port 0
// and returns the admin URL and the listener's address once it is ready.
func runEnvoy(t *testing.T, bin string, bootstrap generic) (admin, listener string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "envoy.json")
	b, err := json.Marshal(bootstrap)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, b, 0o600))
	adminPath := filepath.Join(dir, "admin-address")
	p := testenv.Start(t, testenv.EnvoyCommand("envoy", bin, cfg, "warn", "--admin-address-path", adminPath))
	p.Ready(t, 30*time.Second, func(ctx context.Context) error {
		a, err := os.ReadFile(adminPath)
		if err != nil || len(a) == 0 {
			return fmt.Errorf("no admin address in %s yet", adminPath)
		}
		admin = "http://" + strings.TrimSpace(string(a))
		return testenv.HTTPOK(http.DefaultClient, admin+"/ready")(ctx)
	})

	resp, err := http.Get(admin + "/listeners?format=json")
	require.NoError(t, err)
	defer resp.Body.Close()
	var ls struct {
		ListenerStatuses []struct {
			LocalAddress struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"local_address"`
		} `json:"listener_statuses"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ls))
	require.Len(t, ls.ListenerStatuses, 1)
	sa := ls.ListenerStatuses[0].LocalAddress.SocketAddress
	return admin, fmt.Sprintf("%s:%d", sa.Address, sa.PortValue)
}

// socketAddress is an Envoy address in YAML-decoded form.
func socketAddress(host string, port int) generic {
	return generic{"socket_address": generic{"address": host, "port_value": port}}
}

// staticCluster is a one-endpoint STATIC cluster; http2 for gRPC.
func staticCluster(name, host string, port int, http2 bool) generic {
	c := generic{
		"name": name, "type": "STATIC", "connect_timeout": "1s",
		"load_assignment": generic{"cluster_name": name, "endpoints": []any{generic{
			"lb_endpoints": []any{generic{"endpoint": generic{"address": socketAddress(host, port)}}}}}},
	}
	if http2 {
		c["typed_extension_protocol_options"] = generic{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": generic{
			"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
			"explicit_http_config": generic{"http2_protocol_options": generic{}}}}
	}
	return c
}

// filterBootstrap wraps one HTTP filter, as Istio or another control plane
// would insert it, in a minimal bootstrap: a listener with that filter before
// the router, one route to the "backend" cluster, and the given clusters.
func filterBootstrap(filter generic, clusters ...generic) generic {
	return filterBootstrapChain([]generic{filter}, clusters...)
}

// filterBootstrapChain is filterBootstrap with several filters, in order,
// before the router.
func filterBootstrapChain(filters []generic, clusters ...generic) generic {
	chain := make([]any, len(filters))
	for i, f := range filters {
		chain[i] = f
	}
	hcm := generic{
		"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"stat_prefix": "ingress",
		"route_config": generic{"virtual_hosts": []any{generic{
			"name": "all", "domains": []any{"*"},
			"routes": []any{generic{"match": generic{"prefix": "/"}, "route": generic{"cluster": "backend", "timeout": "10s"}}},
		}}},
		"http_filters": append(chain, generic{
			"name":         "envoy.filters.http.router",
			"typed_config": generic{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
		}),
	}
	cs := make([]any, len(clusters))
	for i, c := range clusters {
		cs[i] = c
	}
	return generic{
		"admin": generic{"address": socketAddress("127.0.0.1", 0)},
		"static_resources": generic{
			"listeners": []any{generic{
				"name":                              "ingress",
				"address":                           socketAddress("127.0.0.1", 0),
				"per_connection_buffer_limit_bytes": 1048576,
				"filter_chains": []any{generic{"filters": []any{generic{
					"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm,
				}}}},
			}},
			"clusters": cs,
		},
	}
}
