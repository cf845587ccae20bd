package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// EnvoyReadyTimeout bounds how long an Envoy may take to answer /ready.
const EnvoyReadyTimeout = 30 * time.Second

// EnvoyCommand runs Envoy on cfg with one worker thread (the benchmark's
// unit, and cheap for tests), no hot restart (so several run at once), at
// logLevel, plus extra flags.
func EnvoyCommand(name, bin, cfg, logLevel string, extra ...string) Command {
	args := append([]string{"-c", cfg, "--concurrency", "1", "--disable-hot-restart", "-l", logLevel}, extra...)
	return Command{Name: name, Path: bin, Args: args}
}

// WaitEnvoyReady waits until the Envoy p answers /ready on adminAddr.
func WaitEnvoyReady(ctx context.Context, p *Process, adminAddr string) error {
	return p.WaitReady(ctx, EnvoyReadyTimeout, HTTPOK(http.DefaultClient, "http://"+adminAddr+"/ready"))
}

// envoyPortTries is how many times EnvoyOnFreePorts picks new ports.
const envoyPortTries = 3

// EnvoyOnFreePorts starts Envoy (start runs the command, at logLevel) on
// the config that render writes for a listener and an admin port picked
// free, waits until it is ready, and returns it with the two ports. A port
// picked free can be taken by another process (a parallel test, a client
// socket) before Envoy binds it; Envoy then exits with "Address already
// in use", and this tries again on new ports.
func EnvoyOnFreePorts(ctx context.Context, start func(Command) (*Process, error), name, bin, logLevel string,
	render func(listener, admin int) (string, error)) (*Process, int, int, error) {
	for try := 1; ; try++ {
		listener, err := FreePort()
		if err != nil {
			return nil, 0, 0, err
		}
		admin, err := FreePort()
		if err != nil {
			return nil, 0, 0, err
		}
		cfg, err := render(listener, admin)
		if err != nil {
			return nil, 0, 0, err
		}
		p, err := start(EnvoyCommand(name, bin, cfg, logLevel))
		if err != nil {
			return nil, 0, 0, err
		}
		if err = WaitEnvoyReady(ctx, p, fmt.Sprintf("127.0.0.1:%d", admin)); err == nil {
			return p, listener, admin, nil
		}
		p.Kill() // exited, or alive but never ready: not left behind
		if try == envoyPortTries || !strings.Contains(p.Output(), "Address already in use") {
			return nil, 0, 0, err
		}
	}
}

// StartEnvoyOnFreePorts is EnvoyOnFreePorts for one test (Start, log level
// warn); render writes the config for the two ports.
func StartEnvoyOnFreePorts(t TB, bin string, render func(listener, admin int) string) (p *Process, listener, admin int) {
	t.Helper()
	p, listener, admin, err := EnvoyOnFreePorts(t.Context(), func(c Command) (*Process, error) { return Start(t, c), nil },
		"envoy", bin, "warn", func(l, a int) (string, error) { return render(l, a), nil })
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p, listener, admin
}

// ValidateEnvoyConfig runs `envoy --mode validate`, the authoritative check.
func ValidateEnvoyConfig(bin, path string) error {
	out, err := exec.Command(bin, "--mode", "validate", "--disable-hot-restart", "-l", "warn", "-c", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("envoy --mode validate -c %s: %w\n%s", path, err, out)
	}
	if !strings.Contains(string(out), "OK") {
		return fmt.Errorf("envoy --mode validate -c %s: no OK in\n%s", path, out)
	}
	return nil
}

// ValidateEnvoy is ValidateEnvoyConfig for a test.
func ValidateEnvoy(t TB, bin, path string) {
	t.Helper()
	if err := ValidateEnvoyConfig(bin, path); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// EnvoyCounter reads one counter from the Envoy admin /stats at adminAddr
// (host:port); a counter never incremented may be absent and reads as 0.
func EnvoyCounter(ctx context.Context, c *http.Client, adminAddr, name string) (int64, error) {
	text, err := GetText(ctx, c, "http://"+adminAddr+"/stats?filter=^"+name+"$")
	if err != nil {
		return 0, err
	}
	line := strings.TrimSpace(text)
	if line == "" {
		return 0, nil
	}
	_, v, ok := strings.Cut(line, ": ")
	if !ok {
		return 0, fmt.Errorf("envoy stat line %q", line)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("envoy stat line %q: %w", line, err)
	}
	return n, nil
}

// EnvoyStat is EnvoyCounter for a test.
func EnvoyStat(t TB, adminAddr, name string) int {
	t.Helper()
	n, err := EnvoyCounter(t.Context(), http.DefaultClient, adminAddr, name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return int(n)
}

// GetText fetches url's body, requiring 200.
func GetText(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}
