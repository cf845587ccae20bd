package main

import (
	"fmt"
	"net"
	"strings"
)

// The markers below are text of the shipped envoy/envoy.yaml. Each must
// occur exactly once: if envoy.yaml changes so that one no longer matches,
// the benchmark stops with an error instead of measuring another setup.
const (
	adminMarker    = "{ address: 127.0.0.1, port_value: 9901 }"
	listenerMarker = "{ address: 0.0.0.0, port_value: 10000 }"
	extProcMarker  = "port_value: 50051 }"
	backendMarker  = "port_value: 8081 }"
	// The ext_proc filter runs from its list entry up to the router's.
	extProcFilterStart = "          - name: envoy.filters.http.ext_proc\n"
	extProcFilterEnd   = "          - name: envoy.filters.http.router\n"
)

// envoyConfig says where one benchmark Envoy listens and what it reaches.
type envoyConfig struct {
	listener, admin int
	backend         string // host:port
	// extProc is the host:port of the ext_proc server (idemproxy or the null
	// server); empty removes the ext_proc filter from the chain entirely.
	// The then unused idemproxy cluster stays, pointing nowhere we listen.
	extProc string
}

// renderEnvoyConfig derives a benchmark config from the shipped envoy.yaml
// by exact replacements, so the benchmark runs the configuration users run:
// same routes, same processing mode, same timeouts.
func renderEnvoyConfig(src string, c envoyConfig) (string, error) {
	_, backendPort, err := net.SplitHostPort(c.backend)
	if err != nil {
		return "", fmt.Errorf("backend address %q: %w", c.backend, err)
	}
	reps := [][2]string{
		{adminMarker, fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", c.admin)},
		{listenerMarker, fmt.Sprintf("{ address: 127.0.0.1, port_value: %d }", c.listener)},
		{backendMarker, "port_value: " + backendPort + " }"},
	}
	if c.extProc != "" {
		_, extPort, err := net.SplitHostPort(c.extProc)
		if err != nil {
			return "", fmt.Errorf("ext_proc address %q: %w", c.extProc, err)
		}
		reps = append(reps, [2]string{extProcMarker, "port_value: " + extPort + " }"})
	}
	cfg := src
	for _, r := range reps {
		if cfg, err = replaceOnce(cfg, r[0], r[1]); err != nil {
			return "", err
		}
	}
	if c.extProc == "" {
		if cfg, err = cutFilter(cfg); err != nil {
			return "", err
		}
	}
	return cfg, nil
}

// replaceOnce replaces old by new, requiring exactly one occurrence.
func replaceOnce(s, old, new string) (string, error) {
	if n := strings.Count(s, old); n != 1 {
		return "", fmt.Errorf("envoy.yaml: expected exactly one %q, found %d", old, n)
	}
	return strings.Replace(s, old, new, 1), nil
}

// cutFilter removes the ext_proc filter's list entry, leaving the router.
func cutFilter(s string) (string, error) {
	for _, m := range []string{extProcFilterStart, extProcFilterEnd} {
		if n := strings.Count(s, m); n != 1 {
			return "", fmt.Errorf("envoy.yaml: expected exactly one %q, found %d", m, n)
		}
	}
	start := strings.Index(s, extProcFilterStart)
	end := strings.Index(s, extProcFilterEnd)
	if end < start {
		return "", fmt.Errorf("envoy.yaml: the ext_proc filter no longer comes before the router")
	}
	return s[:start] + s[end:], nil
}
