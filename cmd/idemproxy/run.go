package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/idemproxy/idemproxy/processor"
	"github.com/idemproxy/idemproxy/redisstore"
)

// run wires the server and serves until ctx ends, then shuts down
// gracefully. Tests call it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	s, err := parseSettings(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: s.LogLevel}))
	// go-redis logs through one package-level logger, not per client.
	// Setting it here is acceptable because a process runs one run: every
	// client it makes is ours. (Tests that call run several times in one
	// process just move go-redis's lines to the latest run's log, still
	// JSON.) The swap is atomic in go-redis, so no lock is needed.
	redis.SetLogger(redisLogger{log})

	rdb, err := newRedisClient(s)
	if err != nil {
		return usageError{err}
	}
	defer rdb.Close()
	var tp trace.TracerProvider // nil: no tracing
	if s.Tracing {
		sdk, err := startTracing(ctx, s.TraceProtocol, rdb, log)
		if err != nil {
			return err
		}
		// Deferred after rdb.Close, so it runs first: the last spans,
		// Redis's included, are flushed before the client goes.
		defer stopTracing(sdk, log)
		tp = sdk
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := processor.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	store := redisstore.New(rdb, redisstore.Options{
		Prefix: s.RedisPrefix,
		// Fences must keep growing for as long as a backend may remember a
		// key, which is at least as long as we do.
		FenceTTL: max(2*s.Processor.Retention, redisstore.DefaultFenceTTL),
		Keyring:  s.Keyring,
	})
	hs := health.NewServer()
	checker, err := newHealthChecker(rdb, hs, s, reg, log)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	held, err := newHeldKeys(store, s.HeldKeysEvery, reg, log)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	proc, err := processor.New(s.Processor, processor.Options{
		Store:   store,
		Gate:    checker,
		Metrics: metrics,
		Logger:  log,

		TracerProvider: tp,
	})
	if err != nil {
		return usageError{err}
	}

	grpcLis, err := net.Listen("tcp", s.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	adminLis, err := net.Listen("tcp", s.AdminAddr)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("admin listener: %w", err)
	}

	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.MaxMessageBytes),
		// A fixed pool of stream goroutines instead of one new goroutine
		// per stream: every HTTP request is a stream here.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
	if s.TLSCert != "" {
		reloads, err := newTLSReloads(reg)
		if err != nil {
			grpcLis.Close()
			adminLis.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		tlsCfg, err := serverTLS(s.TLSCert, s.TLSKey, s.TLSClientCA, log, reloads)
		if err != nil {
			grpcLis.Close()
			adminLis.Close()
			return usageError{err}
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	gs := grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(gs, proc)
	healthpb.RegisterHealthServer(gs, hs)
	if s.Reflection {
		reflection.Register(gs)
	}
	var keys http.Handler
	if s.AdminToken != "" {
		keys = keysHandler{token: s.AdminToken, scopeHeaders: s.Processor.ScopeHeaders, keys: proc, store: store, log: log}
	}
	admin := &http.Server{Handler: adminHandler(reg, checker, keys, s.Pprof), ReadHeaderTimeout: 5 * time.Second}

	log.Info("grpc listening", "addr", grpcLis.Addr().String(), "tls", s.TLSCert != "", "mtls", s.TLSClientCA != "")
	log.Info("admin listening", "addr", adminLis.Addr().String())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { checker.run(gctx); return nil })
	g.Go(func() error { held.run(gctx); return nil })
	g.Go(func() error {
		if err := gs.Serve(grpcLis); err != nil {
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
		checker.shutdown()
		stopGRPC(gs, s.ShutdownGrace, log)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
		defer cancel()
		return admin.Shutdown(sctx)
	})
	err = g.Wait()
	log.Info("stopped")
	return err
}

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

// newRedisClient applies our timeouts to the URL's options: every Redis
// call must fail fast enough for the client to get our 503, not Envoy's 504.
func newRedisClient(s settings) (*redis.Client, error) {
	opts, err := redis.ParseURL(s.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %w", err)
	}
	opts.DialTimeout = s.RedisTimeout
	opts.ReadTimeout = s.RedisTimeout
	opts.WriteTimeout = s.RedisTimeout
	opts.PoolTimeout = s.RedisTimeout
	if opts.TLSConfig != nil && s.RedisCA != "" {
		pool, err := loadPool(s.RedisCA)
		if err != nil {
			return nil, fmt.Errorf("--redis-ca: %w", err)
		}
		opts.TLSConfig.RootCAs = pool
	}
	// A new connection should cost one round trip, not four: the request
	// path's Redis deadline covers the dial too. RESP2 needs no HELLO,
	// and the client-name and maintenance-notification handshakes are
	// extras we do not use.
	opts.Protocol = 2
	opts.DisableIdentity = true
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	// A few warm connections, so a quiet period does not make the next
	// requests pay for dials.
	opts.MinIdleConns = 4
	opts.MaxRetries = 1
	// go-redis retries a refused dial 5 times, 100 ms apart, by default:
	// 0.5 s of a client's wait spent on a Redis that is gone. Fail at once;
	// the health checker notices recovery within its interval.
	opts.DialerRetries = 1
	opts.DialerRetryTimeout = 10 * time.Millisecond
	opts.ContextTimeoutEnabled = true
	return redis.NewClient(opts), nil
}
