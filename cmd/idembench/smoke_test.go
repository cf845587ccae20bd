package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestIdembench_Smoke runs the real benchmark end to end with tiny runs:
// the null server and idemproxy behind a real Envoy, Redis and the backend.
// It checks what the run reports about behaviour (statuses, Redis round
// trips, processes cleaned up), never how fast anything was.
func TestIdembench_Smoke(t *testing.T) {
	bin := testenv.BuildBinaries(t, false, "../idemproxy", "../backend", ".")

	jsonPath := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), filepath.Join(bin, "idembench"),
		"--duration", "300ms", "--warmup", "100ms", "--connections", "8", "--only", "b,c",
		"--envoy-config", "../../envoy/envoy.yaml", "--json", jsonPath)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())

	text := stdout.String()
	for _, want := range []string{"b  Envoy + null ext_proc server", "c  Envoy + idemproxy, new key each",
		"goals", "throughput c/b", "Redis round trips per request: new key (c)"} {
		require.Contains(t, text, want)
	}

	raw, err := os.ReadFile(jsonPath)
	require.NoError(t, err)
	var rep report
	require.NoError(t, json.Unmarshal(raw, &rep))
	require.Len(t, rep.Saturation, 2)
	require.Len(t, rep.Fixed, 2)
	for _, p := range append(rep.Saturation, rep.Fixed...) {
		require.Positive(t, p.Requests, "%s %s", p.Scenario, p.Load)
		require.Zero(t, p.Non2xx, "%s %s: %v", p.Scenario, p.Load, p.Statuses)
		require.Zero(t, p.Errors, "%s %s: %s", p.Scenario, p.Load, p.FirstError)
		require.Positive(t, p.ServerPeakRSSKiB)
		switch p.Scenario {
		case "b":
			require.Zero(t, p.Redis.Requests, "the null server never calls Redis")
		case "c":
			// Requests in flight at the window's edges blur it a little.
			require.InDelta(t, 2, p.RedisPerReq, 0.25, "acquire and complete")
		}
	}
	require.Equal(t, rep.Saturation[0].RPS/2, rep.Rate, "the fixed rate is half of b's peak")

	// Every process the run started is gone.
	require.Empty(t, processesUnder(t, bin))
}

// processesUnder lists the command lines of running processes whose
// executable or arguments mention dir.
func processesUnder(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var found []string
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // gone meanwhile
		}
		if cmdline := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(cmdline, dir) {
			found = append(found, cmdline)
		}
	}
	return found
}
