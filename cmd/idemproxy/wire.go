package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/health"

	"github.com/idemproxy/idemproxy/internal/adminapi"
	"github.com/idemproxy/idemproxy/internal/auth"
	"github.com/idemproxy/idemproxy/internal/tracing"
	"github.com/idemproxy/idemproxy/processor"
	"github.com/idemproxy/idemproxy/redisstore"
)

// startTracing starts tracing, Redis calls included, when the OTEL_*
// environment asks for it; tp is nil otherwise. stop flushes the last
// spans.
func startTracing(ctx context.Context, s settings, rdb *redisstore.Topology, log *slog.Logger) (tp trace.TracerProvider, stop func(), err error) {
	if !s.Tracing {
		return nil, func() {}, nil
	}
	sdk, err := tracing.Start(ctx, s.TraceProtocol, versionString(), log, rdb.InstrumentTracing)
	if err != nil {
		return nil, nil, err
	}
	return sdk, func() { tracing.Stop(sdk, log) }, nil
}

// metrics is the registry /metrics serves and the metrics wiring makes
// before the pieces that feed them exist.
type metrics struct {
	reg        *prometheus.Registry
	processor  *processor.Metrics
	batchSizes prometheus.Histogram
}

// newMetrics registers the Go and process collectors, go-redis's pool
// statistics, the processor's metrics and the batch sizes.
func newMetrics(s settings, rdb *redisstore.Topology) (metrics, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// go-redis's own pool statistics (hits, misses, timeouts, connections),
	// summed over every node of a cluster, labelled with the topology.
	if err := prometheus.WrapRegistererWith(prometheus.Labels{"mode": s.RedisMode}, reg).
		Register(rdb.Collector()); err != nil {
		return metrics{}, err
	}
	pm, err := processor.NewMetrics(reg)
	if err != nil {
		return metrics{}, err
	}
	batchSizes := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "idemproxy_redis_batch_calls",
		Help:    "Script calls per Redis write (--redis-batch-writers): 1 at low load, more when calls queue for a writer.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
	})
	if err := reg.Register(batchSizes); err != nil {
		return metrics{}, err
	}
	return metrics{reg: reg, processor: pm, batchSizes: batchSizes}, nil
}

// newStore builds the store on rdb; the caller closes it.
func newStore(s settings, rdb *redisstore.Topology, markers *redisstore.Markers, m metrics) *redisstore.Store {
	if s.OnStoreReset == onStoreResetAccept {
		markers = nil // acquires do not check them: MAY RUN TWICE
	}
	return redisstore.New(rdb.Client(), redisstore.Options{
		Markers: markers,
		Prefix:  s.RedisPrefix,
		// Fences must keep growing for as long as a backend may remember a
		// key, which is at least as long as we do.
		FenceTTL:       max(2*s.Processor.Retention, redisstore.DefaultFenceTTL),
		Keyring:        s.Keyring,
		Topology:       rdb,
		AllReplicas:    s.AllReplicas,
		MinReplicas:    s.MinReplicas,
		ReplicaTimeout: s.ReplicaTimeout,
		Batching:       redisstore.Batching{Writers: s.BatchWriters, MaxBatch: s.BatchMax, Observe: func(n int) { m.batchSizes.Observe(float64(n)) }},
	})
}

// newMonitors builds what watches Redis: the readiness gate, which feeds
// gRPC health, and the count of held keys.
func newMonitors(s settings, rdb *redisstore.Topology, store *redisstore.Store, markers *redisstore.Markers, hs *health.Server, m metrics, log *slog.Logger) (*redisstore.Gate, *redisstore.HeldKeys, error) {
	gate, err := redisstore.NewGate(rdb, redisstore.GateOptions{
		Interval: s.HealthInterval, Timeout: s.RedisTimeout, AllowEvicting: s.AllowEvicting,
		MinReplicas: s.MinReplicas, AllReplicas: s.AllReplicas, Prefix: s.RedisPrefix,
		Markers: markers, Retention: s.Processor.Retention, AcceptResets: s.OnStoreReset == onStoreResetAccept,
		Registerer: m.reg, Logger: log, Report: servingStatus(hs),
	})
	if err != nil {
		return nil, nil, err
	}
	held, err := redisstore.NewHeldKeys(store, s.HeldKeysEvery, m.reg, log)
	if err != nil {
		return nil, nil, err
	}
	return gate, held, nil
}

// newAdminHandler serves the admin port; the key endpoint only with an
// admin token.
func newAdminHandler(s settings, reg *prometheus.Registry, gate *redisstore.Gate, proc *processor.Server, store *redisstore.Store, log *slog.Logger) http.Handler {
	var keys, resets http.Handler
	if s.AdminToken != "" {
		keys = adminapi.Keys{Token: s.AdminToken, ScopeHeaders: s.Processor.ScopeHeaders, Scoper: proc, Store: store, Log: log}
		resets = adminapi.StoreResets{Token: s.AdminToken, Gate: gate, Log: log}
	}
	return adminapi.NewHandler(reg, gate, keys, resets, s.Pprof)
}

// logStart says where idemproxy listens, and warns of settings that leave
// the port open or may run a request twice.
func logStart(s settings, grpcAddr, adminAddr net.Addr, log *slog.Logger) {
	log.Info("grpc listening", "addr", grpcAddr.String(), "tls", s.TLSCert != "", "mtls", s.TLSClientCA != "",
		"token_auth", s.AuthTokenFile != "")
	if !auth.LoopbackOnly(s.GRPCAddr) && s.TLSClientCA == "" && s.AuthTokenFile == "" {
		log.Warn("ext_proc port open to anyone who can reach it (--allow-unauthenticated): keep it behind a mesh's mutual TLS and authorization policy",
			"addr", grpcAddr.String())
	}
	log.Info("admin listening", "addr", adminAddr.String())
	if s.OnStoreReset == onStoreResetAccept {
		log.Warn("--on-store-reset=accept: when a Redis primary loses its records (a restart without persistence, a flush, a failover to a replica " +
			"without the data), keys completed before are served as new, and their retries run again (MAY RUN TWICE); the default refuses them with 503 store-reset")
	}
	if !s.AllReplicas && s.mode() != redisstore.ModeStandalone {
		log.Warn(fmt.Sprintf("--redis-min-replicas %d: writes wait for %d replicas, any of them, not for every replica a failover could promote, "+
			"so a failover can promote one that lacks a lock and a retry then runs a second time (MAY RUN TWICE); the default is all", s.MinReplicas, s.MinReplicas),
			"redis_mode", s.RedisMode, "min_replicas", s.MinReplicas)
	}
}
