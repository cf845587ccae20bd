package redisstore

// What the process sees of go-redis beside the store's own calls: its
// log lines, its pool statistics and its trace spans. They are set up
// here so that no other package needs to import go-redis.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/extra/redisprometheus/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// SetLogger sends go-redis's own log lines (a dial that failed, a pool
// that gave up) to log, as warnings, instead of plain text on stderr.
//
// go-redis logs through one package-level logger, not per client, so this
// is process-wide: a process that runs one server owns every client, and
// its log is the right place. The swap is atomic in go-redis, so no lock
// is needed.
func SetLogger(log *slog.Logger) { redis.SetLogger(redisLogger{log}) }

// redisLogger is go-redis's logging interface over slog.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimSpace(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	l.log.WarnContext(ctx, msg, "component", "go-redis")
}

// Collector is go-redis's own pool statistics (hits, misses, timeouts,
// connections), summed over every node of a cluster, as
// idemproxy_redis_* metrics.
func (t *Topology) Collector() prometheus.Collector {
	return redisprometheus.NewCollector("idemproxy", "redis", t.client)
}

// InstrumentTracing makes Redis calls child spans of the span in their
// context. Calls without one (health checks, the held-keys count) make no
// traces: a root span a second per replica is noise, not insight. Command
// arguments are never recorded: they hold hashed keys, owner tokens and
// stored bodies.
func (t *Topology) InstrumentTracing(tp trace.TracerProvider) error {
	err := redisotel.InstrumentTracing(t.client, redisotel.WithTracerProvider(childOnly{tp: tp}),
		redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false))
	if err != nil {
		return fmt.Errorf("tracing redis: %w", err)
	}
	return nil
}

// childOnly is a TracerProvider whose tracers start spans only inside an
// existing trace.
type childOnly struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (c childOnly) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childOnlyTracer{t: c.tp.Tracer(name, opts...)}
}

type childOnlyTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (c childOnlyTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return c.t.Start(ctx, name, opts...)
}
