package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// writeSelfSigned writes a self-signed certificate with serial and its key.
func writeSelfSigned(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "idemproxy"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"idemproxy"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
}

// touch moves a file's modification time on, as a rotation would, without
// depending on the file system's timestamp granularity.
func touch(t *testing.T, file string, at time.Time) {
	t.Helper()
	require.NoError(t, os.Chtimes(file, at, at))
}

// trySerial handshakes with addr and returns the serial it was shown, or
// -1 when the handshake failed. It never fails the test, so it may run in
// require.Eventually's goroutine.
func trySerial(addr string) int64 {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		return -1
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// servedSerial is trySerial on the test goroutine: a failed handshake fails.
func servedSerial(t *testing.T, addr string) int64 {
	t.Helper()
	n := trySerial(addr)
	require.NotEqual(t, int64(-1), n, "TLS handshake with %s failed", addr)
	return n
}

func TestServer_rotation(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeSelfSigned(t, certFile, keyFile, 1)
	reloads, err := NewReloads(prometheus.NewRegistry())
	require.NoError(t, err)
	cfg, err := Server(certFile, keyFile, "", slog.New(slog.NewTextHandler(io.Discard, nil)), reloads)
	require.NoError(t, err)

	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); _ = c.Close() }()
		}
	}()
	addr := lis.Addr().String()
	require.EqualValues(t, 1, servedSerial(t, addr))

	t.Run("a rotated certificate is served without a restart", func(t *testing.T) {
		writeSelfSigned(t, certFile, keyFile, 2)
		touch(t, certFile, time.Now().Add(time.Minute))
		require.Eventually(t, func() bool { return trySerial(addr) == 2 }, 5*time.Second, 50*time.Millisecond)
		require.EqualValues(t, 1, counterValue(t, reloads.WithLabelValues("ok")))
	})

	t.Run("a broken rotation keeps the old certificate and is counted once", func(t *testing.T) {
		require.NoError(t, os.WriteFile(certFile, []byte("not a certificate"), 0o600))
		touch(t, certFile, time.Now().Add(2*time.Minute))
		require.Eventually(t, func() bool {
			trySerial(addr) // the files are looked at during a handshake
			return counterValue(t, reloads.WithLabelValues("error")) == 1
		},
			5*time.Second, 50*time.Millisecond)
		require.EqualValues(t, 2, servedSerial(t, addr), "the previous certificate is still served")
		// Later handshakes on the same broken files do not count it again.
		deadline := time.Now().Add(1500 * time.Millisecond)
		for time.Now().Before(deadline) {
			require.EqualValues(t, 2, servedSerial(t, addr))
			time.Sleep(100 * time.Millisecond)
		}
		require.EqualValues(t, 1, counterValue(t, reloads.WithLabelValues("error")))
	})

	t.Run("fixing the files takes effect", func(t *testing.T) {
		writeSelfSigned(t, certFile, keyFile, 3)
		touch(t, certFile, time.Now().Add(3*time.Minute))
		require.Eventually(t, func() bool { return trySerial(addr) == 3 }, 5*time.Second, 50*time.Millisecond)
		require.EqualValues(t, 2, counterValue(t, reloads.WithLabelValues("ok")))
	})
}

// counterValue reads one counter of a vector.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Errorf("reading a counter: %v", err)
	}
	return m.GetCounter().GetValue()
}
