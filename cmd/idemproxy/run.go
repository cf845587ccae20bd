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
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

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
	// Process-wide, which is fine since a process runs one run: every
	// go-redis client is ours. (Tests that call run several times in one
	// process move go-redis's lines to the latest run's log, still JSON.)
	redisstore.SetLogger(log)

	rdb, err := redisstore.Connect(redisstore.ConnectOptions{Mode: s.mode(), URL: s.RedisURL, CAFile: s.RedisCA, Timeout: s.RedisTimeout})
	if err != nil {
		return usageError{err}
	}
	defer rdb.Close()
	tp, stopTracing, err := startTracing(ctx, s, rdb, log)
	if err != nil {
		return err
	}
	// Deferred after rdb.Close, so it runs first: the last spans, Redis's
	// included, are flushed before the client goes.
	defer stopTracing()

	m, err := newMetrics(s, rdb)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	markers, err := redisstore.NewMarkers(s.RedisPrefix, s.mode())
	if err != nil {
		return err
	}
	store := newStore(s, rdb, markers, m)
	// After every stream handler (and its settling writes) has returned:
	// the deferred calls above run later, the client's Close last.
	defer store.Close()
	hs := health.NewServer()
	checker, held, err := newMonitors(s, rdb, store, markers, hs, m, log)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// One sharded Pub/Sub connection carries every waited-on key's channel;
	// it ends with run.
	wctx, stopWatcher := context.WithCancel(ctx)
	watcher := store.NewWatcher(wctx, rdb.Client(), log, redisstore.WatcherOptions{Recheck: s.Processor.WaitRecheck})
	defer watcher.Close()
	defer stopWatcher()
	popts := processor.Options{Store: store, Gate: checker, Watcher: watcher,
		Metrics: m.processor, Logger: log, TracerProvider: tp, Lifetime: ctx}
	if s.ReplayAddr != "" {
		popts.Replays = store
	}
	proc, err := processor.New(s.Processor, popts)
	if err != nil {
		return usageError{err}
	}

	// The server is built before anything listens: its TLS and token
	// files are read here, and a bad one must not leave a port open.
	gs, rs, err := newServers(s, m.reg, log, proc, hs, store)
	if err != nil {
		return err
	}
	lis, err := listen(s, gs, rs)
	if err != nil {
		return err
	}
	logStart(s, lis.grpc.Addr(), lis.admin.Addr(), log)
	return servers{
		gate: checker, held: held, health: hs, grpc: gs, grpcLis: lis.grpc, drain: proc.Drain, storeTimeout: s.Processor.StoreTimeout,
		admin:    &http.Server{Handler: newAdminHandler(s, m.reg, checker, proc, store, log), ReadHeaderTimeout: 5 * time.Second},
		adminLis: lis.admin, replay: rs, replayLis: lis.replay,
	}.serve(ctx, s.ShutdownGrace, log)
}

// newServers builds the ext_proc server and the replay endpoint (nil
// without --replay-addr), guarded alike.
func newServers(s settings, reg prometheus.Registerer, log *slog.Logger, proc *processor.Server, hs *health.Server, store *redisstore.Store) (*grpc.Server, *replayServer, error) {
	sec, err := newSecurity(s, reg, log)
	if err != nil {
		return nil, nil, err
	}
	gs, err := newGRPCServer(s, sec, reg, log, proc, hs)
	if err != nil {
		return nil, nil, err
	}
	rs, err := newReplayServer(s, sec, reg, log, store)
	if err != nil {
		gs.Stop()
		return nil, nil, err
	}
	return gs, rs, nil
}

// listeners are the ports run serves; replay is nil without an endpoint.
type listeners struct{ grpc, admin, replay net.Listener }

// listen opens the gRPC, the admin and the replay port; on failure it
// stops gs, whose stream workers run from the start, and closes what it
// opened.
func listen(s settings, gs *grpc.Server, rs *replayServer) (l listeners, err error) {
	defer func() {
		if err != nil {
			for _, c := range []net.Listener{l.grpc, l.admin} {
				if c != nil {
					c.Close()
				}
			}
			gs.Stop()
		}
	}()
	if l.grpc, err = net.Listen("tcp", s.GRPCAddr); err != nil {
		return l, fmt.Errorf("grpc listener: %w", err)
	}
	if l.admin, err = net.Listen("tcp", s.AdminAddr); err != nil {
		return l, fmt.Errorf("admin listener: %w", err)
	}
	l.replay, err = listenReplay(s, rs)
	return l, err
}

// servers is what serve runs until its context ends, and stops in order.
type servers struct {
	gate     *redisstore.Gate
	held     *redisstore.HeldKeys
	health   *health.Server
	grpc     *grpc.Server
	grpcLis  net.Listener
	admin    *http.Server
	adminLis net.Listener
	// replay is the replay endpoint; nil without --replay-addr.
	replay    *replayServer
	replayLis net.Listener
	// drain settles the completions still pending (processor.Drain)
	// after the streams have ended; storeTimeout bounds each of its
	// last attempts.
	drain        func(context.Context) int
	storeTimeout time.Duration
}

// serve runs the servers and the Redis checks until ctx ends or one of
// them fails, then stops them: readiness first, so balancers drain us,
// then the streams (within grace), then the admin port.
func (r servers) serve(ctx context.Context, grace time.Duration, log *slog.Logger) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { r.gate.Run(gctx); return nil })
	g.Go(func() error { r.held.Run(gctx); return nil })
	g.Go(func() error {
		// ErrServerStopped: the shutdown came before Serve began (a
		// signal right at start), which is a clean stop, not a failure.
		if err := r.grpc.Serve(r.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := r.admin.Serve(r.adminLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin server: %w", err)
		}
		return nil
	})
	if r.replay != nil {
		g.Go(func() error { return r.replay.serve(r.replayLis) })
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "grace", grace.String())
		// Not ready for good, so balancers drain us first.
		r.gate.Shutdown()
		r.health.Shutdown()
		start := time.Now()
		stopGRPC(r.grpc, grace, log)
		if r.replay != nil {
			// Replays in flight finish within what is left of the grace.
			r.replay.stop(gctx, start.Add(grace))
		}
		r.drainPending(gctx, start.Add(grace))
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
		defer cancel()
		return r.admin.Shutdown(sctx)
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// drainPending gives the completions still pending what is left of the
// grace, and at least two store timeouts (a last try of the response and
// of its status), then leaves the rest to their leases.
func (r servers) drainPending(ctx context.Context, until time.Time) {
	if r.drain == nil {
		return
	}
	until = later(until, time.Now().Add(2*r.storeTimeout))
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), until)
	defer cancel()
	r.drain(dctx)
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
