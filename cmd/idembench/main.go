// Command idembench measures what idempotency costs per request, through a
// real Envoy: it starts Redis, the mock backend, Envoy (one worker thread),
// idemproxy and a null ext_proc server on free loopback ports, drives load
// through Envoy in each scenario, prints a table and the goal ratios, and
// stops everything. See docs/benchmarks.md.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == nullServerCommand:
		err = runNullServer(ctx, os.Args[2:], os.Stderr)
	case len(os.Args) > 1 && os.Args[1] == memoryServerCommand:
		err = runMemoryServer(ctx, os.Args[2:], os.Stderr)
	default:
		err = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err == nil:
		return
	case interrupted && errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "idembench: interrupted; every process it started is stopped")
		os.Exit(130)
	}
	fmt.Fprintln(os.Stderr, "idembench:", err)
	var usage usageError
	if errors.As(err, &usage) {
		os.Exit(2)
	}
	os.Exit(1)
}

// run is the whole benchmark; the stack it starts is stopped before it
// returns, whatever happens.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logDir, err := os.MkdirTemp("", "idembench-")
	if err != nil {
		return err
	}
	st := newStack(cfg, logDir)
	defer func() {
		st.close()
		if err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(stderr, "idembench: the servers' logs are kept in %s\n", logDir)
			return
		}
		os.RemoveAll(logDir)
	}()
	b := &bench{cfg: cfg, st: st, progress: stderr, nonce: nonce()}
	rep, err := b.run(ctx)
	if err != nil {
		return err
	}
	rep.write(stdout)
	if cfg.jsonPath != "" {
		out, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.jsonPath, append(out, '\n'), 0o644); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	return nil
}

// nonce makes this run's idempotency keys its own.
func nonce() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "r" + hex.EncodeToString(b[:])
}
