package envoy

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// The fault tests need more than one idemproxy on one Redis and one backend
// (a lease taken over by another replica), or an Envoy that reaches the
// backend through Toxiproxy. startShared starts what is shared; addFrontend
// puts an idemproxy and an Envoy in front of it, as often as needed.

// startShared starts Redis and the mock backend only. The returned stack has
// no idemproxy and no Envoy: use it through addFrontend.
func startShared(t *testing.T) *stack {
	t.Helper()
	s := &stack{redis: redistopo.Start(t)}
	s.backendProc = startBackend(t, "127.0.0.1:0")
	s.backendAddr = s.backendProc.logAddr(t, "listening")
	s.backend = "http://" + s.backendAddr
	return s
}

// frontendConfig varies one idemproxy+Envoy pair.
type frontendConfig struct {
	idemproxyArgs []string
	envoyEdits    [][2]string
	// backendAddr is where this Envoy sends requests: "" for the shared
	// backend, or a Toxiproxy listener in front of it.
	backendAddr string
}

// addFrontend starts an idemproxy on shared's Redis and an Envoy in front of
// it and of shared's backend. The returned stack shares Redis and the backend
// (so executions and stats are common) but has its own idemproxy, metrics
// and Envoy.
func addFrontend(t *testing.T, shared *stack, c frontendConfig) *stack {
	t.Helper()
	envoyBin := envoyBinary(t)
	s := &stack{redis: shared.redis, backendProc: shared.backendProc, backendAddr: shared.backendAddr, backend: shared.backend}
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, shared.redis.URL(), "127.0.0.1:0", c.idemproxyArgs...)

	backend := c.backendAddr
	if backend == "" {
		backend = shared.backendAddr
	}
	ports := envoyPorts{listener: freePort(t), admin: freePort(t), idemproxy: grpcAddr, backend: backend, edits: c.envoyEdits}
	s.envoy = startEnvoy(t, envoyBin, renderConfig(t, "envoy.yaml", ports), ports.admin)
	s.envoyAdmin = ports.admin
	s.url = fmt.Sprintf("http://127.0.0.1:%d", ports.listener)
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(s.client.CloseIdleConnections)
	return s
}

// runIdemproxy starts idemproxy with its gRPC server on grpcAddr (port 0:
// any) and waits until it is ready. It returns the process, the gRPC address
// it listens on and its admin base URL.
func runIdemproxy(t *testing.T, redisURL, grpcAddr string, extra ...string) (*process, string, string) {
	t.Helper()
	args := append([]string{
		"--grpc-addr", grpcAddr, "--admin-addr", "127.0.0.1:0",
		"--redis-url", redisURL, "--log-level", "debug",
	}, extra...)
	p := startProcess(t, "idemproxy", filepath.Join(binDir, "idemproxy"), args...)
	grpc := p.logAddr(t, "grpc listening")
	admin := "http://" + p.logAddr(t, "admin listening")
	waitFor(t, 10*time.Second, "idemproxy /readyz", func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p, grpc, admin
}

// pauseProcess freezes p with SIGSTOP and returns the function that resumes
// it. A test that fails while p is frozen resumes it in its cleanup, so the
// process can still be stopped gracefully.
func pauseProcess(t *testing.T, p *process) (resume func()) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGSTOP))
	resumed := false
	resume = func() {
		if !resumed {
			resumed = true
			require.NoError(t, p.cmd.Process.Signal(syscall.SIGCONT))
		}
	}
	// Registered after startProcess's cleanup, so it runs before it.
	t.Cleanup(func() {
		if !resumed {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	return resume
}

// tryDo is stack.do for requests that may legitimately fail on the wire (a
// connection cut mid-response): it returns the error instead of failing.
func (s *stack) tryDo(method, path, body string, headers ...string) (reply, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		return reply{}, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Add(headers[i], headers[i+1])
	}
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b, elapsed: time.Since(start)}, err
}
