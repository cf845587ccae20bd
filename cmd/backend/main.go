// Command backend is the demo's mock payment service behind IdemProxy. It
// counts how often each idempotency key reached it, so tests can prove that
// the proxy lets every key through at most once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const (
	// shutdownTimeout bounds how long in-flight responses (a large body, say)
	// may take to finish once we are told to stop.
	shutdownTimeout = 10 * time.Second
	// readHeaderTimeout guards against clients that open a connection and
	// never finish their headers.
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, err)
	var usage *usageError
	if errors.As(err, &usage) {
		os.Exit(2)
	}
	os.Exit(1)
}

// run configures and serves the backend until ctx is cancelled. Logs go to
// stderr as JSON; the first info line, "listening", carries the bound address,
// which matters when addr asks for port 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, os.LookupEnv, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("backend: listen on %s: %w", cfg.addr, err)
	}
	b := newBackend(cfg.slowDelay, log)
	if cfg.grpcAddr == "" {
		return serve(ctx, ln, b.routes(), log)
	}
	gln, err := lc.Listen(ctx, "tcp", cfg.grpcAddr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("backend: listen on %s: %w", cfg.grpcAddr, err)
	}
	// Either server's failure stops both.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gerr := make(chan error, 1)
	go func() {
		gerr <- serveGRPC(ctx, gln, b, log)
		cancel()
	}()
	err = serve(ctx, ln, b.routes(), log)
	cancel()
	return errors.Join(err, <-gerr)
}

// serve runs an HTTP server on ln until ctx is cancelled, then shuts it down
// within shutdownTimeout. It returns only after the server goroutine is done.
func serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// Request contexts derive from ctx so a /slow request waiting minutes
		// ends at shutdown instead of holding Shutdown until its timeout.
		BaseContext: func(net.Listener) context.Context { return ctx },
		// HTTP/1.1 and cleartext HTTP/2 on one port, so tests can put Envoy
		// in front over either (trailers travel differently in each).
		Protocols: new(http.Protocols),
	}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	log.Info("listening", slog.String("addr", ln.Addr().String()))

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("backend: serve: %w", err)
	case <-ctx.Done():
	}

	log.Info("shutting down", slog.Duration("timeout", shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	shutdownErr := srv.Shutdown(sctx)
	if shutdownErr != nil {
		// Out of patience: cut the remaining connections.
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("backend: serve: %w", err)
	}
	if shutdownErr != nil {
		return fmt.Errorf("backend: shutdown: %w", shutdownErr)
	}
	log.Info("stopped")
	return nil
}
