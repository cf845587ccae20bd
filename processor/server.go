package processor

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Server implements Envoy's ExternalProcessor service.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	cfg     Config
	store   Store // timedStore: every call bounded and observed
	gate    StoreGate
	metrics *Metrics
	log     *slog.Logger
	filter  headerFilter
	keyHdrs map[string]bool
	methods map[string]bool
	scope   map[string]int
	watcher Watcher
	streams atomic.Uint64
	// waiters counts the duplicates held right now, against --max-waiters;
	// reads shares the reads of a key among its waiters.
	waiters atomic.Int64
	reads   *sharedReads
	// watchdogs counts the locks being renewed right now.
	watchdogs atomic.Int64
	// tracer is nil when tracing is off; propagator reads Envoy's trace
	// context from the stream's metadata.
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	meta       *metaCache // nil: no dynamic metadata
	// retryLog remembers the routes whose upstream retries were logged.
	retryLog retryLog
	// durations is each route's recent duration of a keyed request, for
	// the Retry-After of a key in progress (retryafter.go).
	durations routeDurations
	// pending keeps the completions the store did not take in time
	// (pending.go); stopKeeping starts their drain.
	pending     *keeper
	stopKeeping context.CancelFunc
	// replays issues the tokens of replays served by the replay endpoint
	// (reroute.go); nil: none, such records get 409 response-not-stored.
	replays   Replays
	replayTTL time.Duration
}

// Options are the collaborators of a Server.
type Options struct {
	Store Store
	// Gate, when set, can refuse every keyed request while the store is
	// not safe to use (nil: always usable).
	Gate StoreGate
	// Watcher tells waiting duplicates when their key is settled (nil:
	// they only re-check every --wait-recheck).
	Watcher Watcher
	Metrics *Metrics     // nil: collected into a private registry
	Logger  *slog.Logger // nil: slog.Default()
	// TracerProvider, when set, gives every stream a span, a child of
	// the trace context Envoy sends in the stream's gRPC metadata, and
	// the store calls made for it run inside that span. nil: no tracing,
	// at no cost.
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context; nil: W3C Trace Context, what
	// Envoy's OpenTelemetry tracer sends.
	Propagator propagation.TextMapPropagator
	// Lifetime is the server's life (nil: until Drain): the background
	// completions (pending.go) end with it, or with Drain.
	Lifetime context.Context
	// Replays, when set, issues the tokens of the replay endpoint: a
	// response that ended with trailers is then stored with them and
	// replayed there (reroute.go). nil: it is stored without its body,
	// and a retry gets 409 response-not-stored.
	Replays Replays
	// ReplayTTL is a replay token's lifetime (0: DefaultReplayTTL).
	ReplayTTL time.Duration
}

// New validates cfg and builds a Server.
func New(cfg Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("processor: invalid config: %w", err)
	}
	if opts.Store == nil {
		return nil, errors.New("processor: a store is required")
	}
	if opts.Metrics == nil {
		m, err := NewMetrics(prometheus.NewRegistry())
		if err != nil {
			return nil, fmt.Errorf("processor: metrics: %w", err)
		}
		opts.Metrics = m
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Gate == nil {
		opts.Gate = usable{}
	}
	s := &Server{
		cfg: cfg, store: timedStore{opts.Store, cfg.StoreTimeout, opts.Metrics}, gate: opts.Gate, watcher: opts.Watcher, metrics: opts.Metrics, log: opts.Logger,
		filter:  newHeaderFilter(cfg.ExcludeHeaders),
		meta:    newMetaCache(cfg.MetadataNamespace),
		keyHdrs: map[string]bool{},
		scope:   map[string]int{},
		replays: opts.Replays, replayTTL: cmp.Or(opts.ReplayTTL, DefaultReplayTTL),
	}
	s.reads = newSharedReads(s.store)
	life := opts.Lifetime
	if life == nil {
		life = context.Background()
	}
	life, s.stopKeeping = context.WithCancel(life)
	s.pending = newKeeper(life, cfg.MaxPendingCompletions, cfg.MaxPendingBytes, opts.Metrics)
	if opts.TracerProvider != nil {
		s.tracer = opts.TracerProvider.Tracer("github.com/idemproxy/idemproxy/processor")
		s.propagator = opts.Propagator
		if s.propagator == nil {
			s.propagator = propagation.TraceContext{}
		}
	}
	for _, h := range cfg.KeyHeaders {
		s.keyHdrs[h] = true
	}
	for i, h := range cfg.ScopeHeaders {
		s.scope[h] = i
	}
	if len(cfg.Methods) > 0 {
		s.methods = map[string]bool{}
		for _, m := range cfg.Methods {
			s.methods[strings.ToUpper(m)] = true
		}
	}
	return s, nil
}

// Process serves one HTTP request's stream: one reply per message, in order.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx, _ := s.startSpan(stream.Context())
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()

	ex := s.newExchange(ctx, stream.Send)
	// The span ends after finish, so the settling writes finish() makes
	// (and their Redis spans) belong to it.
	defer ex.endSpan()
	defer ex.finish()
	for {
		req, err := stream.Recv()
		if err != nil {
			// Envoy cancels the stream even after a normal request, so EOF
			// and Canceled are ends, not failures; finish() decides from the
			// protocol state what the end means for the lock.
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
				return nil
			}
			ex.logger().Warn("ext_proc stream receive failed", "error", err)
			return err
		}
		resp, err := ex.handle(req)
		if err != nil {
			ex.logger().Warn("ext_proc protocol violation", "error", err)
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if resp == nil {
			return nil // the stream ended while the request waited
		}
		ex.annotate(resp)
		if err := stream.Send(resp); err != nil {
			ex.logger().Info("ext_proc stream send failed", "error", err)
			return nil
		}
		ex.sent()
	}
}

// newToken makes an owner token that no other request can guess or repeat.
func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("processor: owner token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// detached returns a context for work that must finish after Envoy resets
// the stream (store the response, release the lock): it keeps the stream's
// values but not its cancellation, and has its own deadline.
func (s *Server) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.cfg.FinalizeTimeout)
}

// usable is the gate of a server given none.
type usable struct{}

func (usable) Usable(string) error { return nil }
