package main

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/idemproxy/idemproxy/internal/auth"
	"github.com/idemproxy/idemproxy/internal/tracing"
	"github.com/idemproxy/idemproxy/processor"
	"github.com/idemproxy/idemproxy/redisstore"
)

// settings is everything the process is configured with. Defaults live in
// defineFlags, next to each flag's environment variable.
type settings struct {
	GRPCAddr        string
	ReplayAddr      string
	AdminAddr       string
	RedisURL        string
	RedisMode       string
	MinReplicas     int
	AllReplicas     bool // --redis-min-replicas all
	MinReplicasSet  bool // given: else resolve picks the topology's default
	ReplicaTimeout  time.Duration
	RedisTimeout    time.Duration
	BatchWriters    int
	BatchMax        int
	RedisPrefix     string
	Reflection      bool
	MaxMessageBytes int
	ShutdownGrace   time.Duration
	HealthInterval  time.Duration
	LogLevel        slog.Level
	AdminToken      string
	AdminTokenFile  string
	OnUnknown       string
	OnStoreReset    string
	AllowEvicting   bool
	AuthTokenFile   string
	InProgress      string
	Mode            string
	ErrorFormat     string
	ErrorTemplate   string
	AllowUnauth     bool
	HeldKeysEvery   time.Duration
	Pprof           bool
	TLSCert         string
	TLSKey          string
	TLSClientCA     string
	RedisCA         string
	EncryptionKeys  string
	EncryptionFile  string
	Keyring         *redisstore.Keyring
	Processor       processor.Config
	// Tracing is on when the OTEL_* environment asks for it (tracing.go);
	// TraceProtocol is then grpc or http/protobuf.
	Tracing       bool
	TraceProtocol string
}

// mode is --redis-mode as the store names it.
func (s *settings) mode() redisstore.Mode { return redisstore.Mode(s.RedisMode) }

// usageError marks bad configuration: main exits 2 for it.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// The values of --on-store-reset.
const (
	onStoreResetRefuse = "refuse"
	onStoreResetAccept = "accept"
)

// envPrefix is shared by every flag's environment variable.
const envPrefix = "IDEMPROXY_"

// parseSettings reads flags, then environment variables for flags not given
// on the command line, then validates the whole once.
func parseSettings(args []string, getenv func(string) string, stderr io.Writer) (settings, error) {
	s := settings{Processor: processor.DefaultConfig()}
	fs := flag.NewFlagSet("idemproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defineFlags(fs, &s)
	showVersion := fs.Bool(versionFlag, false, "print the version, commit and Go version, and exit")
	// --help is not a mistake: its text goes to stdout and the exit code
	// is 0 (main), and it names every flag's environment variable.
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return s, earlyExit{usageText(fs)}
		}
		fmt.Fprintf(stderr, "Run idemproxy --help for the flags and their environment variables.\n")
		return s, usageError{err}
	}
	if *showVersion {
		return s, earlyExit{versionText()}
	}
	if fs.NArg() > 0 {
		return s, usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		if f.Name == versionFlag {
			return
		}
		if v := getenv(env); v != "" && !given[f.Name] {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return s, usageError{err}
	}
	var terr error
	s.TraceProtocol, s.Tracing, terr = tracing.Enabled(getenv)
	if err := errors.Join(s.resolve(), s.validate(), terr); err != nil {
		return s, usageError{err}
	}
	return s, nil
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func defineFlags(fs *flag.FlagSet, s *settings) {
	p := &s.Processor
	fs.StringVar(&s.GRPCAddr, "grpc-addr", ":50051", "ext_proc gRPC listen address")
	fs.StringVar(&s.ReplayAddr, "replay-addr", "", "replay endpoint listen address, e.g. :50052 (HTTP/2 cleartext, or TLS with --tls-cert; the same --auth-token-file bearer tokens, in the Authorization header): serves the stored responses an immediate response cannot reproduce (ended with trailers), to which idemproxy re-routes their retries (Envoy's idemproxy-replay cluster); empty: off, and such responses are stored without their body (409 response-not-stored)")
	fs.StringVar(&s.AdminAddr, "admin-addr", ":9090", "admin HTTP listen address (/healthz, /readyz, /metrics)")
	fs.StringVar(&s.RedisURL, "redis-url", "redis://127.0.0.1:6379/0", "Redis URL (redis:// or rediss://, user and password allowed); more nodes as ?addr=host:port, the Sentinel primary as ?master_name=NAME")
	fs.StringVar(&s.RedisMode, "redis-mode", string(redisstore.ModeStandalone), "Redis topology: standalone, cluster (the URL names one or more nodes or a configuration endpoint) or sentinel (the URL names the sentinels)")
	fs.Var(replicasFlag{n: &s.MinReplicas, all: &s.AllReplicas, set: &s.MinReplicasSet}, "redis-min-replicas", "`all` or N: which replicas must acknowledge a lock and a stored response (WAIT, pipelined with the write); a lock they did not is refused with 503. all (cluster and sentinel modes): every replica a failover could promote, down ones included, so a replica down means 503 for its primary's new keys. A count N waits for any N replicas and MAY RUN TWICE in cluster or sentinel mode: a failover can promote a replica that lacks the write (seen with 1 in a flapping partition), and 0 waits for none")
	fs.DurationVar(&s.ReplicaTimeout, "redis-replica-timeout", redisstore.DefaultReplicaTimeout, "how long a write waits for the --redis-min-replicas acknowledgements (shorter than --redis-timeout)")
	fs.DurationVar(&s.RedisTimeout, "redis-timeout", time.Second, "bound on each Redis call on the request path (keep under Envoy's message_timeout)")
	fs.IntVar(&s.BatchWriters, "redis-batch-writers", 2, "Redis writes in flight at once; calls made while all are busy go out together in the next (one pipeline), so load costs fewer writes; a call that finds one free goes alone at once. 0: every call is its own write")
	fs.IntVar(&s.BatchMax, "redis-batch-max", redisstore.DefaultMaxBatch, "most calls one batched write carries")
	fs.StringVar(&s.RedisCA, "redis-ca", "", "PEM CA bundle to verify a rediss:// server (default: the system roots)")
	fs.StringVar(&s.TLSCert, "tls-cert", "", "PEM certificate for the gRPC listener (with --tls-key: TLS; reloaded when the file changes)")
	fs.StringVar(&s.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&s.AuthTokenFile, "auth-token-file", "", "file of bearer tokens (one per line, 16+ characters) Envoy must send on every ext_proc stream as gRPC metadata authorization: Bearer <token>; reloaded when it changes, so tokens can rotate")
	fs.BoolVar(&s.AllowUnauth, "allow-unauthenticated", false, "serve ext_proc on a non-loopback address with neither --auth-token-file nor mutual TLS (only where something else, e.g. a mesh's mTLS and authorization policy, guards the port)")
	fs.StringVar(&s.TLSClientCA, "tls-client-ca", "", "PEM CA bundle: require and verify client certificates (mutual TLS with Envoy)")
	fs.StringVar(&s.RedisPrefix, "redis-prefix", "idemproxy:", "prefix of every Redis key")
	fs.BoolVar(&s.Reflection, "reflection", true, "register gRPC server reflection (for grpcurl)")
	fs.BoolVar(&s.Pprof, "pprof", false, "serve Go profiles on the admin port under /debug/pprof/ (keep the admin port private)")
	fs.IntVar(&s.MaxMessageBytes, "max-message-bytes", 16<<20, "largest gRPC message accepted; must exceed Envoy's request buffer limit")
	fs.DurationVar(&s.ShutdownGrace, "shutdown-grace", 20*time.Second, "on SIGTERM, how long in-flight streams may take to finish")
	fs.DurationVar(&s.HealthInterval, "health-interval", time.Second, "how often Redis is pinged for readiness and gRPC health")
	fs.TextVar(&s.LogLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.DurationVar(&p.LockTTL, "lock-ttl", p.LockTTL, "lifetime of an in-progress lock without renewal")
	fs.DurationVar(&p.Heartbeat, "heartbeat", p.Heartbeat, "watchdog renewal interval (shorter than --lock-ttl)")
	fs.BoolVar(&p.ReplayAllViaEndpoint, "replay-all-via-endpoint", false, "serve every replay from the replay endpoint (--replay-addr), not only responses that ended with trailers: no Envoy local-reply rewriting of Content-Type (no Lua filter needed), at the cost of a second hop")
	fs.DurationVar(&p.Retention, "retention", p.Retention, "how long a completed response is kept for replay")
	fs.Var(listFlag{&p.KeyHeaders}, "key-headers", "comma list of headers carrying the idempotency key")
	fs.Var(listFlag{&p.ScopeHeaders}, "scope-headers", "comma list of trusted identity headers added to the key scope (e.g. x-tenant-id)")
	fs.BoolVar(&p.ScopeAuthorization, "scope-authorization", p.ScopeAuthorization, "scope keys by a hash of the Authorization header, so two credentials never share a record (false: only authority and --scope-headers; for clients whose Authorization changes between retries, prefer --scope-jwt-claim or --scope-headers)")
	fs.StringVar(&p.ScopeJWTClaim, "scope-jwt-claim", "", "scope keys by this claim (e.g. sub) of the JWT Envoy's jwt_authn filter verified, instead of the credential hash: a refreshed token of the same subject keeps its records; keyed requests without it get 401")
	fs.StringVar(&p.ScopeJWTPayload, "scope-jwt-payload", p.ScopeJWTPayload, "the jwt_authn provider's payload_in_metadata name, for --scope-jwt-claim")
	fs.TextVar(&p.ScopeLegacyUntil, "scope-legacy-until", time.Time{}, "until this time (RFC 3339), a new key also looks for a record of the previous version's scope (authority and --scope-headers only), so retries of requests made before the upgrade find theirs")
	fs.Var(methodsFlag{&p.Methods}, "methods", "comma list of methods that take part (empty: all)")
	fs.IntVar(&p.MaxStoredBody, "max-body-bytes", p.MaxStoredBody, "largest response body stored for replay")
	fs.Func("no-store-statuses", "response statuses that release the key instead of storing it, so a retry runs again: only statuses that say the request was not processed belong here (default \"408,425,429\"; adding 5xx MAY RUN TWICE a request that failed after its side effect)", func(v string) error {
		set, err := processor.ParseStatusSet(v)
		p.NoStore = set
		return err
	})
	fs.Var(listFlag{&p.ExcludeHeaders}, "exclude-headers", "response headers never replayed, besides hop-by-hop, content-length, date and x-envoy-*")
	fs.StringVar(&s.InProgress, "in-progress", processor.InProgressConflict.String(), "a duplicate of a key still in progress: conflict (409 with Retry-After, the IETF draft's answer) or wait (held until the first request completes, then its replay; per route: x-idemproxy-in-progress)")
	fs.DurationVar(&p.MaxWait, "max-wait", p.MaxWait, "how long a waiting duplicate is held at most before its 409 (below Envoy's max_message_timeout; per route: x-idemproxy-max-wait)")
	fs.IntVar(&p.MaxWaiters, "max-waiters", p.MaxWaiters, "duplicates held at once per process; beyond, the 409 at once")
	fs.DurationVar(&p.WaitRecheck, "wait-recheck", p.WaitRecheck, "how often the keys duplicates wait on are read again (one read per key and process, for all its waiters), in case a completion notice was lost")
	fs.StringVar(&s.Mode, "mode", processor.ModeEnforce.String(), "enforce, or shadow: decide and store as usual but refuse and replay nothing, counting what enforcement would do (idemproxy_shadow_decisions_total); per route: x-idemproxy-mode")
	fs.StringVar(&s.ErrorFormat, "error-format", processor.ErrorFormatProblem.String(), "shape of idemproxy's own error bodies: problem (RFC 9457 application/problem+json), stripe (Stripe's {\"error\":{...}} envelope, statuses and codes Stripe's SDKs retry correctly) or template (--error-template-file); the problem type is always in the Idempotency-Problem header; per route: x-idemproxy-error-format")
	fs.StringVar(&s.ErrorTemplate, "error-template-file", "", "JSON file for --error-format template: a string that is exactly {{status}}, {{type}}, {{title}}, {{detail}} or {{retry_after}} becomes that value (status and retry_after as numbers, retry_after null when none); inside a longer string, its text")
	fs.BoolVar(&p.FailOpen, "fail-open", false, "when Redis fails, let requests through unguarded instead of answering 503")
	fs.StringVar(&s.OnUnknown, "on-unknown", processor.OnUnknownHold.String(), "when a request may have run upstream but its outcome was never seen (stream cut, timeout, idemproxy crashed): hold (the key is refused with 409 outcome-unknown for --retention, until an operator clears it) or rerun-after-ttl (MAY RUN TWICE: the lock expires after --lock-ttl and a retry runs again)")
	fs.StringVar(&s.OnStoreReset, "on-store-reset", onStoreResetRefuse, "when a Redis primary lost its records (restarted without persistence, flushed, failed over to a replica without the data; noticed by a marker idemproxy keeps there): refuse (its keys get 503 store-reset until --retention has passed or an operator acknowledges with POST /admin/v1/store-resets/ack) or accept (MAY RUN TWICE: keys completed before the reset run again)")
	fs.BoolVar(&s.AllowEvicting, "allow-evicting-redis", false, "serve even when Redis's maxmemory-policy may evict keys (MAY RUN TWICE: an evicted lock or response lets a retry run again); default: not ready and 503 until the policy is noeviction")
	fs.DurationVar(&s.HeldKeysEvery, "held-keys-interval", time.Minute, "how often Redis is scanned to count in-progress and outcome-unknown keys for idemproxy_held_keys (0: never)")
	fs.StringVar(&p.FenceHeader, "fence-header", p.FenceHeader, "request header carrying the fencing token upstream (empty: none)")
	fs.IntVar(&p.MaxRequestHeaders, "max-request-headers", p.MaxRequestHeaders, "Envoy's max_headers_count: keyed requests with no room for the fence header get 431")
	fs.Func("max-request-headers-kb", "Envoy's max_request_headers_kb (default 60)", func(v string) error {
		kb, err := strconv.Atoi(v)
		if err != nil || kb < 1 {
			return errors.New("want a positive number of KiB")
		}
		p.MaxRequestHeaderBytes = kb << 10
		return nil
	})
	fs.StringVar(&s.AdminToken, "admin-token", "", "bearer token for /admin/v1/keys and /admin/v1/store-resets (empty with no --admin-token-file: those endpoints are off)")
	fs.StringVar(&s.EncryptionKeys, "encryption-keys", "", "encrypt stored responses at rest (AES-256-GCM): id:base64key[,id:base64key...], the first seals, all open (rotation)")
	fs.StringVar(&s.EncryptionFile, "encryption-keys-file", "", "file holding the --encryption-keys value (preferred: not visible in ps)")
	fs.StringVar(&s.AdminTokenFile, "admin-token-file", "", "file holding the admin bearer token (preferred over --admin-token: not visible in ps)")
	fs.DurationVar(&p.FinalizeTimeout, "finalize-timeout", p.FinalizeTimeout, "bound on storing a response or releasing a lock after the stream ends; a response still not stored then is kept and retried in the background (--max-pending-completions)")
	fs.IntVar(&p.MaxPendingCompletions, "max-pending-completions", p.MaxPendingCompletions, "responses seen in full but not stored within --finalize-timeout, kept and retried in the background at once (until the lease would end, then their status alone); beyond, one is not kept and its key reads as an unknown outcome once its lease ends (0: none kept)")
	fs.Int64Var(&p.MaxPendingBytes, "max-pending-completion-bytes", p.MaxPendingBytes, "bytes of bodies and headers the pending completions may hold; beyond, one is kept as its status alone (409 response-not-stored)")
	fs.StringVar(&p.MetadataNamespace, "metadata-namespace", p.MetadataNamespace, "dynamic-metadata namespace of the decision (idemproxy.outcome, .fence, .result) returned to Envoy for its access log; list it in the filter's metadata_options.receiving_namespaces (empty: none)")
}

// resolve derives the settings that follow from others: secrets read from
// their files, the encryption keyring, the processor's store timeout and
// its choices (--on-unknown, --in-progress, --mode). It is the only step
// that reads files.
func (s *settings) resolve() error {
	var errs []error
	s.Processor.StoreTimeout = s.RedisTimeout
	if !s.MinReplicasSet {
		s.AllReplicas = s.mode() != redisstore.ModeStandalone
	}
	errs = append(errs, choice("--on-unknown", s.OnUnknown, &s.Processor.OnUnknown),
		choice("--in-progress", s.InProgress, &s.Processor.InProgress), choice("--mode", s.Mode, &s.Processor.Mode),
		choice("--error-format", s.ErrorFormat, &s.Processor.ErrorFormat))
	if s.ErrorTemplate != "" {
		tmpl, err := readErrorTemplate(s.ErrorTemplate)
		errs = append(errs, err)
		s.Processor.ErrorTemplate = tmpl
	}
	if s.AdminTokenFile != "" {
		tok, err := readSecretFile("--admin-token-file", s.AdminTokenFile)
		errs = append(errs, err)
		s.AdminToken = tok
	}
	if s.EncryptionFile != "" {
		keys, err := readSecretFile("--encryption-keys-file", s.EncryptionFile)
		errs = append(errs, err)
		s.EncryptionKeys = keys
	}
	if s.AuthTokenFile != "" {
		_, err := auth.ReadTokens(s.AuthTokenFile)
		errs = append(errs, err)
	}
	if s.EncryptionKeys != "" {
		kr, err := redisstore.ParseKeyring(s.EncryptionKeys)
		if err != nil {
			errs = append(errs, fmt.Errorf("--encryption-keys: %w", err))
		}
		s.Keyring = kr
	}
	return errors.Join(errs...)
}

// validate checks the resolved settings, without side effects.
func (s *settings) validate() error {
	var errs []error
	if s.GRPCAddr == "" || s.AdminAddr == "" {
		errs = append(errs, errors.New("--grpc-addr and --admin-addr must not be empty"))
	}
	if tlsOn, err := redisstore.ParseURL(s.mode(), s.RedisURL); err != nil {
		errs = append(errs, err)
	} else if s.RedisCA != "" && !tlsOn {
		errs = append(errs, errors.New("--redis-ca needs a rediss:// --redis-url"))
	}
	switch {
	case s.MinReplicas < 0:
		errs = append(errs, errors.New("--redis-min-replicas must not be negative"))
	case s.ReplicaTimeout <= 0:
		errs = append(errs, errors.New("--redis-replica-timeout must be positive"))
	case s.BatchWriters < 0 || s.BatchMax < 1:
		errs = append(errs, errors.New("--redis-batch-writers must not be negative, --redis-batch-max must be positive"))
	case s.AllReplicas && s.mode() == redisstore.ModeStandalone:
		errs = append(errs, errors.New("--redis-min-replicas all needs --redis-mode cluster or sentinel: a standalone primary's replicas are only promoted by hand; give a count"))
	case (s.MinReplicas > 0 || s.AllReplicas) && s.ReplicaTimeout >= s.RedisTimeout:
		errs = append(errs, fmt.Errorf("--redis-replica-timeout %v must be shorter than --redis-timeout %v: the wait for replicas is part of the write it follows",
			s.ReplicaTimeout, s.RedisTimeout))
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if s.TLSClientCA != "" && s.TLSCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key"))
	}
	if s.RedisTimeout <= 0 {
		errs = append(errs, errors.New("--redis-timeout must be positive"))
	}
	if s.MaxMessageBytes < 1<<20 {
		errs = append(errs, errors.New("--max-message-bytes must be at least 1048576"))
	}
	if s.ShutdownGrace < 0 || s.HealthInterval <= 0 {
		errs = append(errs, errors.New("--shutdown-grace must not be negative and --health-interval must be positive"))
	}
	if s.OnStoreReset != onStoreResetRefuse && s.OnStoreReset != onStoreResetAccept {
		errs = append(errs, fmt.Errorf("--on-store-reset %q: want %s or %s", s.OnStoreReset, onStoreResetRefuse, onStoreResetAccept))
	}
	if s.HeldKeysEvery < 0 {
		errs = append(errs, errors.New("--held-keys-interval must not be negative"))
	}
	if !auth.LoopbackOnly(s.GRPCAddr) && s.TLSClientCA == "" && s.AuthTokenFile == "" && !s.AllowUnauth {
		errs = append(errs, fmt.Errorf("--grpc-addr %s: %w", s.GRPCAddr, auth.ErrOpenPort))
	}
	if s.ReplayAddr != "" && !auth.LoopbackOnly(s.ReplayAddr) && s.TLSClientCA == "" && s.AuthTokenFile == "" && !s.AllowUnauth {
		errs = append(errs, fmt.Errorf("--replay-addr %s: %w", s.ReplayAddr, auth.ErrOpenPort))
	}
	if s.AdminToken != "" && len(s.AdminToken) < 16 {
		errs = append(errs, errors.New("the admin token must be at least 16 characters"))
	}
	if err := s.Processor.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// choice parses the value of a flag that names one of the processor's
// choices (processor.InProgress, Mode, OnUnknown), which define the names
// and the error text once, for the flags and a route's metadata alike.
// The flag itself is a string, so --help shows it as one and a bad value
// is reported with the other settings, as the flag's name and its error.
func choice(flagName, v string, dst encoding.TextUnmarshaler) error {
	if err := dst.UnmarshalText([]byte(v)); err != nil {
		return fmt.Errorf("%s %w", flagName, err)
	}
	return nil
}

// replicasFlag is --redis-min-replicas: all, a count, or unset, which
// resolve turns into the topology's default: all where Redis fails over
// (cluster, sentinel), since a write any fewer replicas have can be lost
// to a failover that promotes one that lacks it (measured: 20 of 20 keys
// ran twice with 0 after a lagging failover, 4-8 of 300 with 1 in a
// flapping partition); 0 standalone, which has no failover.
type replicasFlag struct {
	n   *int
	all *bool
	set *bool
}

func (f replicasFlag) String() string {
	switch {
	case f.set == nil || !*f.set:
		return "all in cluster and sentinel modes, 0 standalone"
	case *f.all:
		return "all"
	}
	return strconv.Itoa(*f.n)
}

func (f replicasFlag) Set(v string) error {
	v = strings.TrimSpace(v)
	if v == "all" {
		*f.n, *f.all, *f.set = 0, true, true
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("%q is neither all nor a whole number", v)
	}
	*f.n, *f.all, *f.set = n, false, true
	return nil
}

// listFlag is a comma-separated list of lower-case names.
type listFlag struct{ dst *[]string }

func (l listFlag) String() string {
	if l.dst == nil {
		return ""
	}
	return strings.Join(*l.dst, ",")
}

func (l listFlag) Set(v string) error {
	*l.dst = nil
	for _, part := range strings.Split(v, ",") {
		if part = strings.ToLower(strings.TrimSpace(part)); part != "" {
			*l.dst = append(*l.dst, part)
		}
	}
	return nil
}

// methodsFlag is a comma-separated list of upper-case methods.
type methodsFlag struct{ dst *[]string }

func (m methodsFlag) String() string { return listFlag(m).String() }

func (m methodsFlag) Set(v string) error {
	if err := listFlag(m).Set(v); err != nil {
		return err
	}
	for i, method := range *m.dst {
		method = strings.ToUpper(method)
		if strings.Trim(method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
			return fmt.Errorf("%q is not an HTTP method", method)
		}
		(*m.dst)[i] = method
	}
	return nil
}

// readSecretFile reads a secret given as a file (not visible in ps). An
// empty file is an error: it would silently turn the feature off, and for
// encryption that means storing plaintext.
func readSecretFile(flag, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s %s is empty", flag, path)
	}
	return v, nil
}
