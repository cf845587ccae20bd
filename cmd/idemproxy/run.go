package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/idemproxy/idemproxy/internal/adminapi"
	"github.com/idemproxy/idemproxy/internal/auth"
	"github.com/idemproxy/idemproxy/internal/tracing"
	"github.com/idemproxy/idemproxy/processor"
	"github.com/idemproxy/idemproxy/redisstore"
)

// run wires the server and serves until ctx ends, then shuts down
// gracefully. Tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) (err error) {
	s, err := parseSettings(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: s.LogLevel}))
	// From here on stderr carries JSON only: a failure is logged as an
	// ERROR line, and main just sets the exit code.
	defer func() {
		if err != nil {
			log.Error("idemproxy stopped on an error", "error", err)
			err = loggedError{err}
		}
	}()
	// go-redis logs through one package-level logger, not per client.
	// Setting it here is acceptable because a process runs one run: every
	// client it makes is ours. (Tests that call run several times in one
	// process just move go-redis's lines to the latest run's log, still
	// JSON.)
	redisstore.SetLogger(log)

	rdb, err := redisstore.Connect(redisstore.ConnectOptions{Mode: s.mode(), URL: s.RedisURL, CAFile: s.RedisCA, Timeout: s.RedisTimeout})
	if err != nil {
		return usageError{err}
	}
	defer rdb.Close()
	var tp trace.TracerProvider // nil: no tracing
	if s.Tracing {
		sdk, err := tracing.Start(ctx, s.TraceProtocol, versionString(), log, rdb.InstrumentTracing)
		if err != nil {
			return err
		}
		// Deferred after rdb.Close, so it runs first: the last spans,
		// Redis's included, are flushed before the client goes.
		defer tracing.Stop(sdk, log)
		tp = sdk
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// go-redis's own pool statistics (hits, misses, timeouts, connections),
	// summed over every node of a cluster, labelled with the topology.
	if err := prometheus.WrapRegistererWith(prometheus.Labels{"mode": s.RedisMode}, reg).
		Register(rdb.Collector()); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	metrics, err := processor.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	batchSizes := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "idemproxy_redis_batch_calls",
		Help:    "Script calls per Redis write (--redis-batch-writers): 1 at low load, more when calls queue for a writer.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
	})
	if err := reg.Register(batchSizes); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	store := redisstore.New(rdb.Client(), redisstore.Options{
		Prefix: s.RedisPrefix,
		// Fences must keep growing for as long as a backend may remember a
		// key, which is at least as long as we do.
		FenceTTL:       max(2*s.Processor.Retention, redisstore.DefaultFenceTTL),
		Keyring:        s.Keyring,
		Topology:       rdb,
		AllReplicas:    s.AllReplicas,
		MinReplicas:    s.MinReplicas,
		ReplicaTimeout: s.ReplicaTimeout,
		Batching:       redisstore.Batching{Writers: s.BatchWriters, MaxBatch: s.BatchMax, Observe: func(n int) { batchSizes.Observe(float64(n)) }},
	})
	// After every stream handler (and its settling writes) has returned:
	// the deferred calls above run later, the client's Close last.
	defer store.Close()
	hs := health.NewServer()
	checker, err := redisstore.NewGate(rdb, redisstore.GateOptions{
		Interval: s.HealthInterval, Timeout: s.RedisTimeout, AllowEvicting: s.AllowEvicting,
		MinReplicas: s.MinReplicas, AllReplicas: s.AllReplicas, Prefix: s.RedisPrefix,
		Registerer: reg, Logger: log, Report: servingStatus(hs),
	})
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	held, err := redisstore.NewHeldKeys(store, s.HeldKeysEvery, reg, log)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// One sharded Pub/Sub connection carries every waited-on key's channel;
	// it ends with run.
	wctx, stopWatcher := context.WithCancel(ctx)
	watcher := store.NewWatcher(wctx, rdb.Client(), log, redisstore.WatcherOptions{Recheck: s.Processor.WaitRecheck})
	defer watcher.Close()
	defer stopWatcher()
	proc, err := processor.New(s.Processor, processor.Options{
		Store:   store,
		Gate:    checker,
		Watcher: watcher,
		Metrics: metrics,
		Logger:  log,

		TracerProvider: tp,
	})
	if err != nil {
		return usageError{err}
	}

	// The server is built before anything listens: its TLS and token
	// files are read here, and a bad one must not leave a port open.
	gs, err := newGRPCServer(s, reg, log, proc, hs)
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", s.GRPCAddr)
	if err != nil {
		gs.Stop() // its stream workers run from the start
		return fmt.Errorf("grpc listener: %w", err)
	}
	adminLis, err := net.Listen("tcp", s.AdminAddr)
	if err != nil {
		grpcLis.Close()
		gs.Stop()
		return fmt.Errorf("admin listener: %w", err)
	}
	var keys http.Handler
	if s.AdminToken != "" {
		keys = adminapi.Keys{Token: s.AdminToken, ScopeHeaders: s.Processor.ScopeHeaders, Scoper: proc, Store: store, Log: log}
	}
	admin := &http.Server{Handler: adminapi.NewHandler(reg, checker, keys, s.Pprof), ReadHeaderTimeout: 5 * time.Second}

	log.Info("grpc listening", "addr", grpcLis.Addr().String(), "tls", s.TLSCert != "", "mtls", s.TLSClientCA != "",
		"token_auth", s.AuthTokenFile != "")
	if !auth.LoopbackOnly(s.GRPCAddr) && s.TLSClientCA == "" && s.AuthTokenFile == "" {
		log.Warn("ext_proc port open to anyone who can reach it (--allow-unauthenticated): keep it behind a mesh's mutual TLS and authorization policy",
			"addr", grpcLis.Addr().String())
	}
	log.Info("admin listening", "addr", adminLis.Addr().String())
	if !s.AllReplicas && s.mode() != redisstore.ModeStandalone {
		log.Warn(fmt.Sprintf("--redis-min-replicas %d: writes wait for %d replicas, any of them, not for every replica a failover could promote, "+
			"so a failover can promote one that lacks a lock and a retry then runs a second time (MAY RUN TWICE); the default is all", s.MinReplicas, s.MinReplicas),
			"redis_mode", s.RedisMode, "min_replicas", s.MinReplicas)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { checker.Run(gctx); return nil })
	g.Go(func() error { held.Run(gctx); return nil })
	g.Go(func() error {
		// ErrServerStopped: the shutdown came before Serve began (a
		// signal right at start), which is a clean stop, not a failure.
		if err := gs.Serve(grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := admin.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "grace", s.ShutdownGrace.String())
		// Not ready for good, so balancers drain us first.
		checker.Shutdown()
		hs.Shutdown()
		stopGRPC(gs, s.ShutdownGrace, log)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
		defer cancel()
		return admin.Shutdown(sctx)
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// loggedError is a failure run has already logged; it unwraps to the
// failure, so a usageError inside still exits 2.
type loggedError struct{ err error }

func (e loggedError) Error() string { return e.err.Error() }
func (e loggedError) Unwrap() error { return e.err }

// stopGRPC lets in-flight streams finish, then cuts the rest. A stream cut
// here leaves its lock to expire: its request may be upstream.
func stopGRPC(gs *grpc.Server, grace time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		log.Warn("grace period over; closing the remaining streams")
		gs.Stop()
		<-done
	}
}
