package deploy

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// procs is idemproxy and cmd/backend, built from this repository, on
// loopback with a Redis of their own: what the tests that send real
// traffic through a shipped config run behind Envoy.
type procs struct {
	redis              *redistopo.Server
	idemproxy, backend *testenv.Process
	extProc, admin     string // idemproxy's gRPC and admin listeners
	backendHTTP        string // cmd/backend's HTTP listener
}

// startProcs builds and starts them: cmd/backend on a free HTTP port with
// backendArgs, idemproxy on free gRPC and admin ports with idemproxyArgs,
// and returns once idemproxy is ready.
func startProcs(t *testing.T, backendArgs, idemproxyArgs []string) procs {
	t.Helper()
	bins := t.TempDir()
	require.NoError(t, testenv.GoBuild(mustAbs(t, root), bins, false, "./cmd/idemproxy", "./cmd/backend"))
	p := procs{redis: redistopo.Start(t)}
	p.backend = testenv.Start(t, testenv.Command{Name: "backend", Path: filepath.Join(bins, "backend"),
		Args: append([]string{"--addr", "127.0.0.1:0"}, backendArgs...)})
	p.backendHTTP = p.backend.LogAddr(t, "listening")
	p.idemproxy = testenv.Start(t, testenv.Command{Name: "idemproxy", Path: filepath.Join(bins, "idemproxy"),
		Args: append([]string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--redis-url", p.redis.URL()}, idemproxyArgs...)})
	p.extProc = p.idemproxy.LogAddr(t, "grpc listening")
	p.admin = p.idemproxy.LogAddr(t, "admin listening")
	p.idemproxy.Ready(t, 10*time.Second, testenv.HTTPOK(http.DefaultClient, "http://"+p.admin+"/readyz"))
	return p
}
