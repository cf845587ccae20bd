package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Defaults live here and nowhere else, next to the env vars that override them.
const (
	envAddr      = "BACKEND_ADDR"
	envSlowDelay = "BACKEND_SLOW_DELAY"
	envLogLevel  = "BACKEND_LOG_LEVEL"
	envGRPCAddr  = "BACKEND_GRPC_ADDR"

	defaultAddr      = ":8081"
	defaultSlowDelay = 45 * time.Second
	defaultLogLevel  = slog.LevelInfo
)

// config is the validated configuration of one backend run.
type config struct {
	addr      string
	grpcAddr  string // "": no gRPC service
	slowDelay time.Duration
	logLevel  slog.Level
}

// usageError marks a configuration mistake. main reports it with exit code 2,
// as the flag package does, so scripts can tell it apart from runtime failures.
type usageError struct{ err error }

func (e *usageError) Error() string { return "backend: " + e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// parseConfig reads flags, falling back to env vars, then to defaults. Env
// lookup is injected so tests need not touch the process environment. It
// returns flag.ErrHelp after printing usage to stdout when help was asked for.
func parseConfig(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) (config, error) {
	cfg := config{addr: defaultAddr, slowDelay: defaultSlowDelay, logLevel: defaultLogLevel}
	if v, ok := lookupEnv(envAddr); ok {
		cfg.addr = v
	}
	if v, ok := lookupEnv(envGRPCAddr); ok {
		cfg.grpcAddr = v
	}
	if v, ok := lookupEnv(envSlowDelay); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return config{}, &usageError{fmt.Errorf("%s: %w", envSlowDelay, err)}
		}
		cfg.slowDelay = d
	}
	if v, ok := lookupEnv(envLogLevel); ok {
		if err := cfg.logLevel.UnmarshalText([]byte(v)); err != nil {
			return config{}, &usageError{fmt.Errorf("%s: %w", envLogLevel, err)}
		}
	}

	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	// The flag package would print errors and help to one writer; we want help
	// on stdout and errors on stderr, so it prints nothing and we do it below.
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.addr, "addr", cfg.addr, "listen address (env "+envAddr+")")
	fs.StringVar(&cfg.grpcAddr, "grpc-addr", cfg.grpcAddr,
		"listen address of the gRPC TestService (grpc.testing.TestService/UnaryCall charges), \"\" for none (env "+envGRPCAddr+")")
	fs.DurationVar(&cfg.slowDelay, "slow-delay", cfg.slowDelay,
		"how long /slow waits before charging (env "+envSlowDelay+")")
	fs.TextVar(&cfg.logLevel, "log-level", cfg.logLevel,
		"debug, info, warn or error; debug logs every request (env "+envLogLevel+")")

	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(fs, stdout)
		return config{}, err
	case err != nil:
		printUsage(fs, stderr)
		return config{}, &usageError{err}
	case fs.NArg() > 0:
		printUsage(fs, stderr)
		return config{}, &usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	if err := cfg.validate(); err != nil {
		return config{}, &usageError{err}
	}
	return cfg, nil
}

func (c config) validate() error {
	if c.addr == "" {
		return errors.New("addr must not be empty")
	}
	if c.slowDelay < 0 {
		return fmt.Errorf("slow-delay must not be negative, got %s", c.slowDelay)
	}
	return nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintln(w, "Usage of backend (mock payment service for the IdemProxy demo):")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
