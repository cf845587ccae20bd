package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The markers below are text of the shipped envoy/envoy.yaml. Each must
// occur exactly once: if envoy.yaml changes so that one no longer matches,
// the tests and the benchmark stop with an error instead of running
// another setup.
const (
	AdminMarker    = "{ address: 127.0.0.1, port_value: 9901 }"
	ListenerMarker = "{ address: 0.0.0.0, port_value: 10000 }"
	ExtProcMarker  = "port_value: 50051 }"
	BackendMarker  = "port_value: 8081 }"
	// ReplayMarker is the port of idemproxy's replay endpoint.
	ReplayMarker = "port_value: 50052 }"
	// TokenMarker is the placeholder of the bearer token Envoy sends to
	// idemproxy (grpc_service.initial_metadata, and the replay route's
	// Authorization header): every occurrence is replaced.
	TokenMarker = "Bearer REPLACE_WITH_A_TOKEN_FROM_IDEMPROXY_AUTH_TOKEN_FILE"
	// The ext_proc filter runs from its list entry up to the router's.
	ExtProcFilterStart = "          - name: envoy.filters.http.ext_proc\n"
	ExtProcFilterEnd   = "          - name: envoy.filters.http.router\n"
)

// EnvoyConfig says where one Envoy built from envoy.yaml listens and what
// it reaches.
type EnvoyConfig struct {
	Listener, Admin int
	// Backend is the host:port of the backend cluster.
	Backend string
	// ExtProc is the host:port of the ext_proc server (idemproxy or the
	// benchmark's null server); empty removes the ext_proc filter from the
	// chain entirely. The then unused idemproxy cluster stays, pointing
	// nowhere anything listens.
	ExtProc string
	// AuthToken replaces the token placeholders; empty leaves them, for an
	// ext_proc server that checks no token.
	AuthToken string
	// Replay is the host:port of idemproxy's replay endpoint; empty leaves
	// the shipped port.
	Replay string
	// Edits are further exact replacements, each matching once, applied
	// after the addresses, for tests that need one setting changed.
	Edits [][2]string
}

// RenderEnvoyConfig derives a config from the shipped envoy.yaml (src) by
// exact replacements, so the tests and the benchmark run the configuration
// users run: same routes, same processing mode, same timeouts.
func RenderEnvoyConfig(src string, c EnvoyConfig) (string, error) {
	backendPort, err := PortOf(c.Backend)
	if err != nil {
		return "", fmt.Errorf("backend: %w", err)
	}
	reps := [][2]string{
		{AdminMarker, fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", c.Admin)},
		{ListenerMarker, fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", c.Listener)},
		{BackendMarker, "port_value: " + backendPort + " }"},
	}
	if c.ExtProc != "" {
		extPort, err := PortOf(c.ExtProc)
		if err != nil {
			return "", fmt.Errorf("ext_proc: %w", err)
		}
		reps = append(reps, [2]string{ExtProcMarker, "port_value: " + extPort + " }"})
	}
	if c.Replay != "" {
		replayPort, err := PortOf(c.Replay)
		if err != nil {
			return "", fmt.Errorf("replay: %w", err)
		}
		reps = append(reps, [2]string{ReplayMarker, "port_value: " + replayPort + " }"})
	}
	cfg := src
	if c.AuthToken != "" {
		if !strings.Contains(cfg, TokenMarker) {
			return "", fmt.Errorf("envoy.yaml: no %q", TokenMarker)
		}
		cfg = strings.ReplaceAll(cfg, TokenMarker, "Bearer "+c.AuthToken)
	}
	for _, r := range append(reps, c.Edits...) {
		if cfg, err = ReplaceOnce(cfg, r[0], r[1]); err != nil {
			return "", err
		}
	}
	if c.ExtProc == "" {
		if cfg, err = CutExtProcFilter(cfg); err != nil {
			return "", err
		}
	}
	return cfg, nil
}

// ReplaceOnce replaces old by new, requiring exactly one occurrence.
func ReplaceOnce(s, old, new string) (string, error) {
	if n := strings.Count(s, old); n != 1 {
		return "", fmt.Errorf("envoy.yaml: expected exactly one %q, found %d", old, n)
	}
	return strings.Replace(s, old, new, 1), nil
}

// CutExtProcFilter removes the ext_proc filter's list entry, leaving the
// router.
func CutExtProcFilter(s string) (string, error) {
	for _, m := range []string{ExtProcFilterStart, ExtProcFilterEnd} {
		if n := strings.Count(s, m); n != 1 {
			return "", fmt.Errorf("envoy.yaml: expected exactly one %q, found %d", m, n)
		}
	}
	start := strings.Index(s, ExtProcFilterStart)
	end := strings.Index(s, ExtProcFilterEnd)
	if end < start {
		return "", fmt.Errorf("envoy.yaml: the ext_proc filter no longer comes before the router")
	}
	return s[:start] + s[end:], nil
}

// RenderEnvoyFile reads src, renders it with c and writes the result to
// dir/name, returning its path.
func RenderEnvoyFile(src string, c EnvoyConfig, dir, name string) (string, error) {
	raw, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("reading the shipped Envoy config: %w", err)
	}
	cfg, err := RenderEnvoyConfig(string(raw), c)
	if err != nil {
		return "", fmt.Errorf("%s: %w", src, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// WriteEnvoyConfig is RenderEnvoyFile into the test's temp dir.
func WriteEnvoyConfig(t TB, src string, c EnvoyConfig) string {
	t.Helper()
	path, err := RenderEnvoyFile(src, c, t.TempDir(), "envoy.yaml")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return path
}
