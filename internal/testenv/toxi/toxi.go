// Package toxi runs Toxiproxy for fault tests: the server is the `tool`
// pinned in go.mod (built from the module cache, never into idemproxy), and
// it is driven through Toxiproxy's own client package.
package toxi

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// serverPkg is Toxiproxy's server, a `tool` of our go.mod.
const serverPkg = "github.com/Shopify/toxiproxy/v2/cmd/server"

// builds holds one build per directory: the first test that needs
// Toxiproxy pays for it, the others reuse it.
var builds sync.Map // dir -> func() (string, error)

// Build builds toxiproxy-server into dir once per process and returns its
// path.
func Build(dir string) (string, error) {
	once, _ := builds.LoadOrStore(dir, sync.OnceValues(func() (string, error) {
		bin := filepath.Join(dir, "toxiproxy-server")
		out, err := exec.Command("go", "build", "-o", bin, serverPkg).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go build %s: %w\n%s", serverPkg, err, out)
		}
		return bin, nil
	}))
	return once.(func() (string, error))()
}

// Toxiproxy is a running toxiproxy-server and a client of its API.
type Toxiproxy struct {
	*toxiproxy.Client
	// API is the base URL of the HTTP API (for scripts: TOXIPROXY_API).
	API  string
	Proc *testenv.Process
}

// StartServer runs bin with its API on a free loopback port and waits
// until the API answers. A port picked free can be taken before the
// server binds it: it then exits, and another port is tried, up to 3
// times.
func StartServer(ctx context.Context, bin string) (*Toxiproxy, error) {
	var lastErr error
	for range 3 {
		port, err := testenv.FreePort()
		if err != nil {
			return nil, err
		}
		p, err := testenv.StartProcess(testenv.Command{Name: "toxiproxy", Path: bin,
			Args: []string{"-host", "127.0.0.1", "-port", strconv.Itoa(port)}})
		if err != nil {
			return nil, err
		}
		tp := &Toxiproxy{API: fmt.Sprintf("http://127.0.0.1:%d", port), Proc: p}
		tp.Client = toxiproxy.NewClient(tp.API)
		lastErr = p.WaitReady(ctx, 10*time.Second, testenv.HTTPOK(http.DefaultClient, tp.API+"/version"))
		if lastErr == nil {
			return tp, nil
		}
		exited, _ := p.Exited() // by itself: its port was taken, try another
		p.Kill()
		if !exited || ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// Start builds (once, into dir) and runs Toxiproxy for a test (skipped
// under -short); it is stopped in t.Cleanup.
func Start(t testing.TB, dir string) *Toxiproxy {
	t.Helper()
	testenv.NeedsBinaries(t)
	bin, err := Build(dir)
	if err != nil {
		t.Fatalf("toxi: %v", err)
	}
	tp, err := StartServer(t.Context(), bin)
	if err != nil {
		t.Fatalf("toxi: %v", err)
	}
	t.Cleanup(func() {
		tp.Proc.Stop(testenv.StopGrace)
		if t.Failed() {
			t.Logf("--- output of toxiproxy ---\n%s", tp.Proc.Output())
		}
	})
	return tp
}

// CreateProxy makes Toxiproxy listen on listen and forward to upstream.
func (tp *Toxiproxy) CreateProxy(t testing.TB, name, listen, upstream string) {
	t.Helper()
	if _, err := tp.Client.CreateProxy(name, listen, upstream); err != nil {
		t.Fatalf("toxi: create proxy %s: %v", name, err)
	}
}

// AddToxic adds a toxic to every connection of proxy, present and future.
func (tp *Toxiproxy) AddToxic(t testing.TB, proxy, name, typ, stream string, attrs toxiproxy.Attributes) {
	t.Helper()
	_, err := tp.Client.AddToxic(&toxiproxy.ToxicOptions{ProxyName: proxy, ToxicName: name, ToxicType: typ,
		Stream: stream, Toxicity: 1, Attributes: attrs})
	if err != nil {
		t.Fatalf("toxi: add toxic %s to %s: %v", name, proxy, err)
	}
}

// RemoveToxic removes a toxic; the proxy passes traffic untouched again.
func (tp *Toxiproxy) RemoveToxic(t testing.TB, proxy, name string) {
	t.Helper()
	if err := tp.Client.RemoveToxic(&toxiproxy.ToxicOptions{ProxyName: proxy, ToxicName: name}); err != nil {
		t.Fatalf("toxi: remove toxic %s from %s: %v", name, proxy, err)
	}
}

// SetEnabled enables or disables proxy; disabled, it drops every
// connection and refuses new ones.
func (tp *Toxiproxy) SetEnabled(t testing.TB, proxy string, on bool) {
	t.Helper()
	p, err := tp.Client.Proxy(proxy)
	if err == nil {
		if on {
			err = p.Enable()
		} else {
			err = p.Disable()
		}
	}
	if err != nil {
		t.Fatalf("toxi: enable %s = %v: %v", proxy, on, err)
	}
}
