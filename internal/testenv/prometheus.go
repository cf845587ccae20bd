package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// InstallPrometheus is the hint in every "not found" error of promtool
// and prometheus: Debian's package has both.
const InstallPrometheus = "install it with `apt-get update && apt-get install -y prometheus` (Debian/Ubuntu; it brings promtool too)"

// FindPromtool returns the path of promtool on PATH.
func FindPromtool() (string, error) { return findOnPath("promtool") }

// FindPrometheus returns the path of the prometheus server on PATH.
func FindPrometheus() (string, error) { return findOnPath("prometheus") }

func findOnPath(name string) (string, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is required but was not found on PATH: %s", name, InstallPrometheus)
	}
	return bin, nil
}

// PromtoolBin is FindPromtool for a test (skipped under -short).
func PromtoolBin(t TB) string {
	t.Helper()
	NeedsBinaries(t)
	bin, err := FindPromtool()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return bin
}

// Prometheus is a running prometheus server.
type Prometheus struct {
	// URL is its base URL, http://127.0.0.1:port.
	URL  string
	Proc *Process
}

// StartPrometheus runs Debian's prometheus on a free loopback port with
// config (a prometheus.yml's text) and the rule files it names, copied
// beside it, and waits for /-/ready. Its storage is a temp dir.
func StartPrometheus(t TB, config string, files map[string][]byte) *Prometheus {
	t.Helper()
	NeedsBinaries(t)
	bin, err := FindPrometheus()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dir := t.TempDir()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	addr := Addr(t)
	p := Start(t, Command{Name: "prometheus", Path: bin, Args: []string{
		"--config.file=" + cfg, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr, "--log.level=warn",
	}})
	base := "http://" + addr
	if err := p.WaitReady(t.Context(), 30*time.Second, HTTPOK(http.DefaultClient, base+"/-/ready")); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return &Prometheus{URL: base, Proc: p}
}

// Query runs an instant query through the HTTP API and returns the raw
// JSON answer; a query Prometheus cannot parse or run is an error.
func (p *Prometheus) Query(ctx context.Context, expr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/query?query="+url.QueryEscape(expr), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		// Prometheus says why in the body: a parse error and where.
		return "", fmt.Errorf("query %q: %s: %s", expr, resp.Status, b)
	}
	return string(b), nil
}
