package envoy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// toxiproxyPkg is Toxiproxy's server, a `tool` of our go.mod: the version is
// pinned there and it builds from the module cache, never into idemproxy.
const toxiproxyPkg = "github.com/Shopify/toxiproxy/v2/cmd/server"

// toxiproxyBuild builds toxiproxy-server into binDir once, on first use, so
// tests that do not need it do not pay for it.
var toxiproxyBuild = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "toxiproxy-server")
	out, err := exec.Command("go", "build", "-o", bin, toxiproxyPkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", toxiproxyPkg, err, out)
	}
	return bin, nil
})

// toxiproxy is a running toxiproxy-server, driven through its HTTP API.
type toxiproxy struct {
	api    string // base URL
	client *http.Client
}

// startToxiproxy runs toxiproxy-server with its API on a free loopback port.
func startToxiproxy(t *testing.T) *toxiproxy {
	t.Helper()
	bin, err := toxiproxyBuild()
	require.NoError(t, err)
	port := freePort(t)
	p := startProcess(t, "toxiproxy", bin, "-host", "127.0.0.1", "-port", strconv.Itoa(port))
	tp := &toxiproxy{api: fmt.Sprintf("http://127.0.0.1:%d", port), client: &http.Client{Timeout: 5 * time.Second}}
	waitFor(t, 10*time.Second, "toxiproxy API", func() bool {
		select {
		case <-p.done:
			require.FailNow(t, "toxiproxy exited early", "%v\n%s", p.err, p.out.String())
		default:
		}
		resp, err := tp.client.Get(tp.api + "/version")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return tp
}

// call sends one API request and requires the wanted status.
func (tp *toxiproxy) call(t *testing.T, method, path string, body any, want int) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, tp.api+path, rd)
	require.NoError(t, err)
	resp, err := tp.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, want, resp.StatusCode, "toxiproxy %s %s: %s", method, path, got)
}

// createProxy makes Toxiproxy listen on listen and forward to upstream.
func (tp *toxiproxy) createProxy(t *testing.T, name, listen, upstream string) {
	t.Helper()
	tp.call(t, http.MethodPost, "/proxies",
		map[string]any{"name": name, "listen": listen, "upstream": upstream, "enabled": true}, http.StatusCreated)
}

// addToxic adds a toxic to every connection of proxy, present and future.
func (tp *toxiproxy) addToxic(t *testing.T, proxy, name, typ, stream string, attrs map[string]any) {
	t.Helper()
	tp.call(t, http.MethodPost, "/proxies/"+proxy+"/toxics",
		map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs},
		http.StatusOK)
}

// removeToxic removes a toxic; the proxy passes traffic untouched again.
func (tp *toxiproxy) removeToxic(t *testing.T, proxy, name string) {
	t.Helper()
	tp.call(t, http.MethodDelete, "/proxies/"+proxy+"/toxics/"+name, nil, http.StatusNoContent)
}
