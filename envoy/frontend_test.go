package envoy

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
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
	return startSharedWith(t)
}

// startSharedWith is startShared with arguments for redis-server.
func startSharedWith(t *testing.T, redisArgs ...string) *stack {
	t.Helper()
	s := &stack{redis: redistopo.Start(t, redisArgs...)}
	s.backendProc = startBackend(t, "127.0.0.1:0")
	s.backendAddr = s.backendProc.LogAddr(t, "listening")
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
	envoyBin := testenv.EnvoyBin(t)
	s := &stack{redis: shared.redis, backendProc: shared.backendProc, backendAddr: shared.backendAddr, backend: shared.backend}
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, "idemproxy", shared.redis.URL(), "127.0.0.1:0", "debug", c.idemproxyArgs...)

	backend := c.backendAddr
	if backend == "" {
		backend = shared.backendAddr
	}
	s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: backend, Edits: c.envoyEdits}, 16)
	return s
}

// runIdemproxy starts idemproxy with its gRPC server on grpcAddr (port 0:
// any) and waits until it is ready. It returns the process, the gRPC address
// it listens on and its admin base URL.
func runIdemproxy(t *testing.T, name, redisURL, grpcAddr, logLevel string, extra ...string) (*testenv.Process, string, string) {
	t.Helper()
	return runIdemproxyEnv(t, name, nil, redisURL, grpcAddr, logLevel, extra...)
}

// runIdemproxyEnv is runIdemproxy with env (NAME=value) added to its
// environment.
func runIdemproxyEnv(t *testing.T, name string, env []string, redisURL, grpcAddr, logLevel string, extra ...string) (*testenv.Process, string, string) {
	t.Helper()
	args := append([]string{
		"--grpc-addr", grpcAddr, "--admin-addr", "127.0.0.1:0",
		"--redis-url", redisURL, "--log-level", logLevel, "--auth-token-file", e2eTokenFile,
	}, extra...)
	p := testenv.Start(t, testenv.Command{Name: name, Path: filepath.Join(binDir, "idemproxy"), Args: args, Env: env})
	grpc := p.LogAddr(t, "grpc listening")
	admin := "http://" + p.LogAddr(t, "admin listening")
	p.Ready(t, 10*time.Second, testenv.HTTPOK(http.DefaultClient, admin+"/readyz"))
	return p, grpc, admin
}

// pauseProcess freezes p with SIGSTOP and returns the function that resumes
// it. A test that fails while p is frozen has it resumed by Stop in its
// cleanup, so the process can still be stopped gracefully.
func pauseProcess(t *testing.T, p *testenv.Process) (resume func()) {
	t.Helper()
	require.NoError(t, p.Signal(syscall.SIGSTOP))
	resumed := false
	return func() {
		if !resumed {
			resumed = true
			require.NoError(t, p.Signal(syscall.SIGCONT))
		}
	}
}

// tryDo is stack.do for requests that may legitimately fail on the wire (a
// connection cut mid-response): it returns the error instead of failing.
func (s *stack) tryDo(method, path, body string, headers ...string) (reply, error) {
	return s.tryDoCtx(context.Background(), method, path, body, headers...)
}

// send is tryDo for clients that keep going: a wire error becomes a reply
// with status -1 and the error as its body, to be counted with the rest.
func (s *stack) send(method, path, body string, headers ...string) reply {
	r, err := s.tryDo(method, path, body, headers...)
	if err != nil {
		r = reply{status: -1, body: []byte(err.Error())}
	}
	return r
}

// tryDoCtx is tryDo whose request ends with ctx (the client hangs up).
func (s *stack) tryDoCtx(ctx context.Context, method, path, body string, headers ...string) (reply, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, rd)
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
	done := time.Now()
	return reply{status: resp.StatusCode, header: resp.Header, body: b, elapsed: done.Sub(start), done: done}, err
}
