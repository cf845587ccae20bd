package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
)

// loadCompose parses docker-compose.yml with the compose-spec reference
// parser (the one `docker compose` uses), schema validation included, with
// an empty environment so nothing on this machine leaks in.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	dir, err := filepath.Abs(root)
	require.NoError(t, err)
	details, err := loader.LoadConfigFiles(t.Context(), []string{filepath.Join(dir, "docker-compose.yml")}, dir)
	require.NoError(t, err)
	details.Environment = types.Mapping{}
	p, err := loader.LoadWithContext(t.Context(), *details)
	require.NoError(t, err)
	return p
}

func TestCompose_Services(t *testing.T) {
	p := loadCompose(t)
	require.Equal(t, "idemproxy", p.Name)
	require.ElementsMatch(t, []string{"envoy", "token", "redis", "idemproxy", "backend", "toxiproxy"}, p.ServiceNames())

	t.Run("envoy is the version the tests run", func(t *testing.T) {
		require.Equal(t, "envoyproxy/envoy:v"+envoyVersion(t), p.Services["envoy"].Image)
		// internal/testenv pins the same version for the Go tests.
		require.Contains(t, string(readRepoFile(t, "internal", "testenv", "bins.go")),
			`EnvoyVersion = "`+envoyVersion(t)+`"`)
	})
	t.Run("envoy runs envoy-compose.yaml", func(t *testing.T) {
		v := p.Services["envoy"].Volumes
		require.Len(t, v, 2)
		require.Equal(t, mustAbs(t, repoPath("envoy", "envoy-compose.yaml")), v[0].Source)
		require.Equal(t, "/etc/envoy/envoy.yaml", v[0].Target)
		require.True(t, v[0].ReadOnly)
	})
	t.Run("envoy and idemproxy share the token, read-only", func(t *testing.T) {
		for _, name := range []string{"envoy", "idemproxy"} {
			found := false
			for _, v := range p.Services[name].Volumes {
				if v.Source == "auth" {
					require.Equal(t, "/run/idemproxy", v.Target, name)
					require.True(t, v.ReadOnly, name)
					found = true
				}
			}
			require.True(t, found, "%s mounts the auth volume", name)
		}
		require.Equal(t, "/run/idemproxy/token", *p.Services["idemproxy"].Environment["IDEMPROXY_AUTH_TOKEN_FILE"])
		require.Equal(t, "auth", p.Services["token"].Volumes[0].Source)
		require.False(t, p.Services["token"].Volumes[0].ReadOnly, "the token service writes it")
	})
	t.Run("idemproxy and backend are built from the Dockerfile", func(t *testing.T) {
		for _, name := range []string{"idemproxy", "backend"} {
			b := p.Services[name].Build
			require.NotNil(t, b, name)
			require.Equal(t, mustAbs(t, root), b.Context, name)
			require.Equal(t, name, b.Target, name)
		}
	})
	t.Run("idemproxy settings are real flags", func(t *testing.T) {
		env := p.Services["idemproxy"].Environment
		known := idemproxyEnvVars(t)
		for k := range env {
			if isGoRuntime(k) {
				continue
			}
			require.Contains(t, known, k, "idemproxy has no such environment variable")
		}
		require.Equal(t, "400", *env["GOGC"], "the runtime settings of deploy/kubernetes")
		require.Equal(t, "redis://redis:6379/0", *env["IDEMPROXY_REDIS_URL"])
		require.Greater(t, time.Duration(*p.Services["idemproxy"].StopGracePeriod), mustDuration(t, *env["IDEMPROXY_SHUTDOWN_GRACE"]),
			"stop_grace_period must leave room for the shutdown grace")
	})
}

func TestCompose_Ports(t *testing.T) {
	p := loadCompose(t)
	published := map[string]string{} // host port -> service
	for name, s := range p.Services {
		for _, port := range s.Ports {
			require.Equal(t, "127.0.0.1", port.HostIP, "%s publishes %s beyond loopback", name, port.Published)
			published[port.Published] = name
		}
	}
	for port, service := range map[string]string{
		"10000": "envoy",     // the data plane
		"10001": "toxiproxy", // envoy_front: where responses get lost
		"9090":  "idemproxy", // admin: /readyz, /metrics
		"8081":  "backend",   // /stats: executions per key
		"8474":  "toxiproxy", // Toxiproxy's API, for lost-response.sh
	} {
		require.Equal(t, service, published[port], "port %s", port)
	}
}

// TestCompose_StartOrder checks that `docker compose up` waits for each
// dependency to be healthy, and that every service has a healthcheck.
func TestCompose_StartOrder(t *testing.T) {
	p := loadCompose(t)
	for name, s := range p.Services {
		for dep, d := range s.DependsOn {
			want := types.ServiceConditionHealthy
			if dep == "token" {
				want = types.ServiceConditionCompletedSuccessfully // a one-shot job
			}
			require.Equal(t, want, d.Condition, "%s -> %s", name, dep)
		}
		if name == "token" {
			require.Nil(t, s.HealthCheck, "the token job exits; it has no health")
			continue
		}
		require.NotNil(t, s.HealthCheck, "%s has no healthcheck", name)
		require.False(t, s.HealthCheck.Disable, name)
		require.Equal(t, "CMD", s.HealthCheck.Test[0], "%s: exec form, no shell needed", name)
	}
	deps := func(name string) []string {
		var out []string
		for d := range p.Services[name].DependsOn {
			out = append(out, d)
		}
		slices.Sort(out)
		return out
	}
	require.Equal(t, []string{"idemproxy", "token", "toxiproxy"}, deps("envoy"))
	require.Equal(t, []string{"redis", "token"}, deps("idemproxy"))
	require.Empty(t, deps("token"))
	require.Equal(t, []string{"backend"}, deps("toxiproxy"))
	require.Empty(t, deps("redis"))
	require.Empty(t, deps("backend"))

	t.Run("healthchecks ask the right ports", func(t *testing.T) {
		env := p.Services["idemproxy"].Environment
		require.Equal(t, []string{"CMD", "wget", "-qO-", "http://127.0.0.1" + *env["IDEMPROXY_ADMIN_ADDR"] + "/readyz"},
			[]string(p.Services["idemproxy"].HealthCheck.Test))
		benv := p.Services["backend"].Environment
		require.Equal(t, []string{"CMD", "wget", "-qO-", "http://127.0.0.1" + *benv["BACKEND_ADDR"] + "/healthz"},
			[]string(p.Services["backend"].HealthCheck.Test))
		require.Contains(t, strings.Join(p.Services["envoy"].HealthCheck.Test, " "), "/dev/tcp/127.0.0.1/9901")
	})
}

// toxiProxy is one entry of Toxiproxy's -config file.
type toxiProxy struct {
	Name     string `json:"name"`
	Listen   string `json:"listen"`
	Upstream string `json:"upstream"`
	Enabled  bool   `json:"enabled"`
}

// TestCompose_Toxiproxy follows both proxies from end to end: who connects
// to them, and whether their upstreams are where the services listen.
func TestCompose_Toxiproxy(t *testing.T) {
	p := loadCompose(t)
	tp := p.Services["toxiproxy"]
	require.Equal(t, "ghcr.io/shopify/toxiproxy:2.12.0", tp.Image)
	require.Len(t, tp.Volumes, 1)
	require.Contains(t, []string(tp.Command), "-config="+tp.Volumes[0].Target)
	require.Contains(t, []string(tp.Command), "-host=0.0.0.0")

	raw, err := os.ReadFile(tp.Volumes[0].Source)
	require.NoError(t, err)
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	var proxies []toxiProxy
	require.NoError(t, dec.Decode(&proxies))
	byName := map[string]toxiProxy{}
	for _, px := range proxies {
		require.True(t, px.Enabled, px.Name)
		byName[px.Name] = px
	}
	require.Len(t, byName, 2)

	t.Run("backend proxy sits between envoy and the backend", func(t *testing.T) {
		px := byName["backend"]
		require.Equal(t, "0.0.0.0:8082", px.Listen)
		require.Equal(t, "backend"+*p.Services["backend"].Environment["BACKEND_ADDR"], px.Upstream)
		require.Equal(t, "toxiproxy:8082", composeClusterAddress(t, "backend"))
	})
	t.Run("envoy_front proxy sits in front of envoy", func(t *testing.T) {
		px := byName["envoy_front"]
		require.Equal(t, "0.0.0.0:10001", px.Listen)
		require.Equal(t, "envoy:10000", px.Upstream)
		require.Equal(t, "10000", portOf(t, dig(t, loadGeneric(t, "envoy", "envoy-compose.yaml"),
			"static_resources", "listeners", "0", "address", "socket_address")))
	})
	t.Run("envoy reaches idemproxy where it listens", func(t *testing.T) {
		require.Equal(t, "idemproxy"+*p.Services["idemproxy"].Environment["IDEMPROXY_GRPC_ADDR"],
			composeClusterAddress(t, "idemproxy"))
	})
	t.Run("healthcheck names a configured proxy", func(t *testing.T) {
		test := tp.HealthCheck.Test
		require.Contains(t, byName, test[len(test)-1])
	})
}

// composeClusterAddress is host:port of a cluster's one endpoint in
// envoy/envoy-compose.yaml.
func composeClusterAddress(t *testing.T, cluster string) string {
	t.Helper()
	cfg := loadGeneric(t, "envoy", "envoy-compose.yaml")
	for _, c := range dig(t, cfg, "static_resources", "clusters").([]any) {
		if dig(t, c, "name") != cluster {
			continue
		}
		require.Equal(t, "STRICT_DNS", dig(t, c, "type"), cluster)
		sa := dig(t, c, "load_assignment", "endpoints", "0", "lb_endpoints", "0", "endpoint", "address", "socket_address")
		return net.JoinHostPort(dig(t, sa, "address").(string), portOf(t, sa))
	}
	require.FailNow(t, "no such cluster", cluster)
	return ""
}

// TestCompose_EnvoyHealthcheck runs the envoy service's healthcheck command
// (bash, no curl in the image) against a real Envoy's admin port: it must
// pass while Envoy is ready and fail once it is gone.
func TestCompose_EnvoyHealthcheck(t *testing.T) {
	t.Parallel()
	bin := envoyBinary(t)
	test := loadCompose(t).Services["envoy"].HealthCheck.Test
	require.Equal(t, []string{"CMD", "bash", "-c"}, []string(test[:3]))
	script := test[3]
	require.Equal(t, 1, strings.Count(script, "/127.0.0.1/9901"), "the check must ask the admin port of envoy-compose.yaml")
	require.Equal(t, "9901", portOf(t, dig(t, loadGeneric(t, "envoy", "envoy-compose.yaml"), "admin", "address", "socket_address")))

	_, filter := loadEnvoyFilter(t, "envoyfilter-sidecar.yaml")
	admin, _ := runEnvoy(t, bin, filterBootstrap(filter,
		staticCluster(idemproxyCluster(t), "127.0.0.1", 1, true), staticCluster("backend", "127.0.0.1", 1, false)))
	_, adminPort, err := net.SplitHostPort(strings.TrimPrefix(admin, "http://"))
	require.NoError(t, err)
	check := func() error {
		cmd := exec.Command(test[1], test[2], strings.Replace(script, "/9901", "/"+adminPort, 1))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	require.NoError(t, check(), "healthcheck against a ready Envoy")

	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port where no Envoy answers
	require.NoError(t, err)
	_, deadPort, _ := net.SplitHostPort(ln.Addr().String())
	require.NoError(t, ln.Close())
	cmd := exec.Command(test[1], test[2], strings.Replace(script, "/9901", "/"+deadPort, 1))
	require.Error(t, cmd.Run(), "healthcheck without an Envoy")
}

// TestCompose_Token runs the token service's script and Envoy's entrypoint
// script for real (sh, od, sed; paths moved into a temp dir): the token is
// made once, kept on the next start, and written into a copy of
// envoy-compose.yaml that the real Envoy accepts.
func TestCompose_Token(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	dir := t.TempDir()
	run := func(script string) string {
		t.Helper()
		script = strings.ReplaceAll(script, "/run/idemproxy", dir)
		out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput()
		require.NoError(t, err, "%s\n%s", script, out)
		return string(out)
	}
	tokenCmd := p.Services["token"].Command
	require.Equal(t, []string{"/bin/sh", "-c"}, []string(tokenCmd[:2]))
	run(tokenCmd[2])
	token, err := os.ReadFile(filepath.Join(dir, "token"))
	require.NoError(t, err)
	require.Regexp(t, `^[0-9a-f]{64}$`, string(token), "32 random bytes in hex, no newline")
	st, err := os.Stat(filepath.Join(dir, "token"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o444), st.Mode().Perm(), "readable by idemproxy's non-root user")
	run(tokenCmd[2])
	again, err := os.ReadFile(filepath.Join(dir, "token"))
	require.NoError(t, err)
	require.Equal(t, token, again, "a restart keeps the token")

	envoy := p.Services["envoy"]
	require.Equal(t, []string{"/bin/sh", "-c"}, []string(envoy.Entrypoint))
	script := envoy.Command[0]
	require.Contains(t, script, "exec envoy -c /tmp/envoy.yaml")
	// Up to the exec: the config copy with the token in it. ($$ became $
	// when compose loaded the file.)
	render, _, ok := strings.Cut(script, " && exec envoy")
	require.True(t, ok)
	render = strings.ReplaceAll(render, "/etc/envoy/envoy.yaml", mustAbs(t, repoPath("envoy", "envoy-compose.yaml")))
	render = strings.ReplaceAll(render, "/tmp/envoy.yaml", filepath.Join(dir, "envoy.yaml"))
	run(render)
	cfg, err := os.ReadFile(filepath.Join(dir, "envoy.yaml"))
	require.NoError(t, err)
	require.Contains(t, string(cfg), "Bearer "+string(token))
	require.NotContains(t, string(cfg), "REPLACE_WITH_A_TOKEN")
	validateEnvoy(t, envoyBinary(t), filepath.Join(dir, "envoy.yaml"))
}
