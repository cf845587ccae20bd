// Package tlsconf builds the gRPC listener's TLS configuration, whose
// certificate is reloaded when its files change.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// certReloader serves the certificate in certFile/keyFile and reloads it
// when the files change, so a rotated certificate (cert-manager, Vault) is
// picked up at the next handshake without a restart. A failed reload keeps
// the previous certificate, logs why and counts it: a rotation that never
// takes effect must not go unnoticed until the old certificate expires.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	reloads           *prometheus.CounterVec // by result: ok, error

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
	failed  time.Time // modTime of the files that last failed to load
}

func newCertReloader(certFile, keyFile string, log *slog.Logger, reloads *prometheus.CounterVec) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log, reloads: reloads}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	st, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	r.cert, r.modTime = &cert, st.ModTime()
	return nil
}

// getCertificate is tls.Config.GetCertificate. It looks at the file at most
// once a second: handshakes are rare (Envoy keeps HTTP/2 connections), but
// a burst of them should not each stat the disk.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= time.Second {
		r.checked = now
		r.reloadLocked()
	}
	return r.cert, nil
}

// reloadLocked loads changed files; r.mu is held. A broken pair is
// reported once per change of the files, not at every handshake.
func (r *certReloader) reloadLocked() {
	st, err := os.Stat(r.certFile)
	if err != nil || st.ModTime().Equal(r.modTime) || st.ModTime().Equal(r.failed) {
		return
	}
	if err := r.load(); err != nil {
		r.failed = st.ModTime()
		r.reloads.WithLabelValues("error").Inc()
		r.log.Error("reloading the TLS certificate failed; still serving the previous one",
			"cert", r.certFile, "key", r.keyFile, "error", err)
		return
	}
	r.reloads.WithLabelValues("ok").Inc()
	r.log.Info("TLS certificate reloaded", "cert", r.certFile)
}

// NewReloads creates the counter of certificate reloads.
func NewReloads(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_tls_reloads_total",
		Help: "Reloads of the gRPC listener's TLS certificate after its file changed, by result (ok, error).",
	}, []string{"result"})
	c.WithLabelValues("ok")
	c.WithLabelValues("error")
	return c, reg.Register(c)
}

// Server builds the gRPC server's TLS config: TLS with cert and key, and
// mutual TLS when a client CA is given (Envoy must then present a
// certificate signed by it).
func Server(certFile, keyFile, clientCA string, log *slog.Logger, reloads *prometheus.CounterVec) (*tls.Config, error) {
	r, err := newCertReloader(certFile, keyFile, log, reloads)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.getCertificate, NextProtos: []string{"h2"}}
	if clientCA != "" {
		pool, err := loadPool(clientCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// loadPool reads PEM certificates into a pool.
func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New(file + ": no PEM certificate found")
	}
	return pool, nil
}
