package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"runtime"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/idemproxy/idemproxy/internal/auth"
	"github.com/idemproxy/idemproxy/internal/tlsconf"
)

// extProcService is the name Envoy's gRPC health checks can ask for.
const extProcService = "envoy.service.ext_proc.v3.ExternalProcessor"

// newGRPCServer builds the ext_proc server with its transport security:
// TLS (and mutual TLS) from certificate files, bearer tokens from the
// token file, both reloaded when their files change. The health service
// is registered too; it is the one service that needs no token.
func newGRPCServer(s settings, sec security, reg prometheus.Registerer, log *slog.Logger, proc extprocv3.ExternalProcessorServer, hs *health.Server) (*grpc.Server, error) {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.MaxMessageBytes),
		// A fixed pool of stream goroutines instead of one new goroutine
		// per stream: every HTTP request is a stream here.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		// Stop returns only once every handler has: a stream cut at
		// shutdown still marks its key (bounded by --finalize-timeout)
		// before the store and the Redis client close.
		grpc.WaitForHandlers(true),
	}
	if sec.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(sec.tls)))
	}
	if sec.tokens != nil {
		streamAuth, err := auth.NewStreamAuth(sec.tokens.Current, reg, log)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		opts = append(opts, grpc.ChainStreamInterceptor(streamAuth.Stream), grpc.ChainUnaryInterceptor(streamAuth.Unary))
	}
	gs := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(gs, proc)
	healthpb.RegisterHealthServer(gs, hs)
	if s.Reflection {
		reflection.Register(gs)
	}
	return gs, nil
}

// security is what guards the ext_proc and the replay port alike: TLS
// (mutual with --tls-client-ca) and the bearer tokens; nil when off.
type security struct {
	tls    *tls.Config
	tokens *auth.TokenFile
}

// newSecurity reads the TLS and token files (reloaded when they change).
func newSecurity(s settings, reg prometheus.Registerer, log *slog.Logger) (security, error) {
	var sec security
	if s.TLSCert != "" {
		reloads, err := tlsconf.NewReloads(reg)
		if err != nil {
			return sec, fmt.Errorf("metrics: %w", err)
		}
		if sec.tls, err = tlsconf.Server(s.TLSCert, s.TLSKey, s.TLSClientCA, log, reloads); err != nil {
			return sec, usageError{err}
		}
	}
	if s.AuthTokenFile != "" {
		tokens, err := auth.NewTokenFile(s.AuthTokenFile, log, reg)
		if err != nil {
			return sec, usageError{err}
		}
		sec.tokens = tokens
	}
	return sec, nil
}

// servingStatus reports the readiness of the store's gate as gRPC health,
// for the server as a whole and for the ext_proc service: a balancer
// should prefer a replica whose keyed requests would not all get 503.
func servingStatus(hs *health.Server) func(ready bool) {
	return func(ready bool) {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if ready {
			st = healthpb.HealthCheckResponse_SERVING
		}
		hs.SetServingStatus("", st)
		hs.SetServingStatus(extProcService, st)
	}
}
