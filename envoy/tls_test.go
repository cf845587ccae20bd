package envoy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// envoyUpstreamTLS makes Envoy's idemproxy cluster speak mutual TLS.
func envoyUpstreamTLS(p testPKI) [2]string {
	const cluster = "  - name: idemproxy\n    type: STATIC\n"
	return [2]string{cluster, cluster + fmt.Sprintf(`    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: { filename: %q }
            private_key: { filename: %q }
          validation_context:
            trusted_ca: { filename: %q }
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: { exact: localhost }
`, p.ClientCert, p.ClientKey, p.CA)}
}

// TestEndToEnd_TLS: Envoy talks to idemproxy over mutual TLS, and idemproxy
// talks to a Redis that only accepts TLS and an ACL user with a password.
func TestEndToEnd_TLS(t *testing.T) {
	testenv.NeedsRedisTLS(t)
	t.Parallel()
	pki := newTestPKI(t)
	redisTLSPort := testenv.Port(t)
	s := startStackWith(t, stackConfig{
		redisArgs: []string{
			"--tls-port", strconv.Itoa(redisTLSPort),
			"--tls-cert-file", pki.ServerCert, "--tls-key-file", pki.ServerKey, "--tls-ca-cert-file", pki.CA,
			"--tls-auth-clients", "no",
			// Only alice, with her password, may run commands.
			"--user", "default", "off",
			"--user", "alice", "on", ">s3cret-pass", "~*", "&*", "+@all",
		},
		idemproxyArgs: []string{
			"--redis-url", fmt.Sprintf("rediss://alice:s3cret-pass@localhost:%d/0", redisTLSPort),
			"--redis-ca", pki.CA,
			"--tls-cert", pki.ServerCert, "--tls-key", pki.ServerKey, "--tls-client-ca", pki.CA,
		},
		envoyEdits: [][2]string{envoyUpstreamTLS(pki)},
	})

	t.Run("the whole path works: charge, then replay", func(t *testing.T) {
		key := newKey(t)
		first := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, first.status, "%s", first.body)
		again := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
		require.True(t, again.replayed())
		require.Equal(t, string(first.body), string(again.body))
		require.Equal(t, 1, s.executions(t, key))
	})

	grpcAddr := s.idemproxy.LogAddr(t, "grpc listening")
	check := func(t *testing.T, creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(creds))
		require.NoError(t, err)
		defer conn.Close()
		ctx, cancel := contextWithTimeout(t, 3*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	t.Run("a client without a certificate is refused", func(t *testing.T) {
		pool, err := loadCAPool(pki.CA)
		require.NoError(t, err)
		err = check(t, credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"}))
		require.Error(t, err)
	})
	t.Run("plain text is refused", func(t *testing.T) {
		require.Error(t, check(t, insecure.NewCredentials()))
	})
	t.Run("a client with a certificate from the CA is served", func(t *testing.T) {
		pool, err := loadCAPool(pki.CA)
		require.NoError(t, err)
		cert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
		require.NoError(t, err)
		require.NoError(t, check(t, credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}})))
	})
}

// TestEndToEnd_RedisWrongPassword: with credentials Redis refuses, idemproxy
// does not report ready and says why in its log.
func TestEndToEnd_RedisWrongPassword(t *testing.T) {
	t.Parallel()
	rs := redistopo.Start(t, "--user", "default", "off", "--user", "alice", "on", ">s3cret-pass", "~*", "&*", "+@all")
	p := startBin(t, "idemproxy", "idemproxy",
		"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-url", "redis://alice:wrong-pass@"+rs.Addr+"/0", "--health-interval", "100ms")
	admin := "http://" + p.LogAddr(t, "admin listening")
	testenv.WaitFor(t, 10*time.Second, "the failed Redis check to be logged", func() bool {
		return strings.Contains(p.Output(), "WRONGPASS")
	})
	resp, err := http.Get(admin + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

func loadCAPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no certificate", file)
	}
	return pool, nil
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
