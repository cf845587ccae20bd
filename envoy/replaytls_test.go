package envoy

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// envoyReplayTLS makes Envoy's idemproxy-replay cluster speak mutual TLS
// (HTTP/2 by ALPN), as envoyUpstreamTLS does for the ext_proc cluster.
func envoyReplayTLS(p testPKI) [2]string {
	tls := envoyUpstreamTLS(p)
	const cluster = "  - name: idemproxy-replay\n    type: STATIC\n"
	return [2]string{cluster, strings.Replace(tls[1], "  - name: idemproxy\n    type: STATIC\n", cluster, 1)}
}

// TestEndToEnd_ReplayEndpointTLS: with --tls-cert, --tls-key and
// --tls-client-ca the replay endpoint speaks mutual TLS like the ext_proc
// port; Envoy's replay cluster with a client certificate gets the replay
// with its trailers, and a caller without a certificate is refused in the
// handshake.
func TestEndToEnd_ReplayEndpointTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	s, replayAddr := startReplayStackArgs(t, []string{"--replay-addr", "127.0.0.1:0",
		"--tls-cert", pki.ServerCert, "--tls-key", pki.ServerKey, "--tls-client-ca", pki.CA},
		h2Backend, envoyUpstreamTLS(pki), envoyReplayTLS(pki))
	c := h2cClient()
	key := newKey(t)
	first, firstBody := sendH2(t, c, s.url+"/trailers", `{"amount":5000}`, "Idempotency-Key", key)
	again, againBody := sendH2(t, c, s.url+"/trailers", `{"amount":5000}`, "Idempotency-Key", key)
	require.Equal(t, 1, s.executions(t, key))
	require.Equal(t, http.StatusOK, again.StatusCode, againBody)
	require.Equal(t, firstBody, againBody)
	require.Equal(t, "sha256:demo", again.Trailer.Get("X-Charge-Checksum"))
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
	require.Equal(t, first.Trailer, again.Trailer)

	pool, err := loadCAPool(pki.CA)
	require.NoError(t, err)
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, ForceAttemptHTTP2: true}}
	resp, err := noCert.Get(fmt.Sprintf("https://%s/", replayAddr))
	if err == nil {
		resp.Body.Close()
	}
	require.Error(t, err, "no client certificate: refused in the handshake")
}
