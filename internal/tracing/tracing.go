// Package tracing sets up OpenTelemetry tracing from the standard OTEL_*
// environment: an OTLP exporter, a batcher and the process's resource.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracing is configured the OpenTelemetry way, with the standard OTEL_*
// environment variables, and is off unless asked for: an OTLP endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or
// OTEL_TRACES_EXPORTER=otlp turns it on; OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none keeps it off. The protocol is
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL: grpc,
// or http/protobuf (the specification's default). Everything else the
// exporter, the batcher and the sampler read themselves (endpoint,
// headers, OTEL_EXPORTER_OTLP_INSECURE, OTEL_BSP_*, OTEL_TRACES_SAMPLER,
// default parentbased_always_on, so Envoy's sampling decision is
// followed), as do the resource's OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES.

// Enabled reads whether tracing is asked for, and refuses exporters
// other than OTLP rather than silently exporting nothing.
func Enabled(getenv func(string) string) (protocol string, on bool, err error) {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return "", false, nil
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return "", false, nil
	case "":
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return "", false, nil
		}
	case "otlp":
	default:
		return "", false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: idemproxy exports traces with otlp only (or none)", exp)
	}
	protocol = getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch protocol {
	case "":
		return "http/protobuf", true, nil
	case "grpc", "http/protobuf":
		return protocol, true, nil
	}
	return "", false, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: want grpc or http/protobuf", protocol)
}

// newTracerProvider builds the SDK's provider with a batching OTLP
// exporter. Nothing is dialled here: the exporters connect lazily. The
// caller must Shutdown the provider, which flushes what is queued.
func newTracerProvider(ctx context.Context, protocol, version string) (*sdktrace.TracerProvider, error) {
	var exp sdktrace.SpanExporter
	var err error
	if protocol == "grpc" {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// Later detectors win: our service name is the default, the
	// environment (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) overrides.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "idemproxy"), attribute.String("service.version", version)),
		resource.WithTelemetrySDK(), resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, errors.Join(fmt.Errorf("OTEL resource: %w", err), exp.Shutdown(ctx))
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// Start builds the provider for protocol (from Enabled), with version as
// the service's, routes OpenTelemetry's own errors (an export that
// failed) into the JSON log, and hands the provider to instrument (the
// Redis client's tracing), which may be nil.
func Start(ctx context.Context, protocol, version string, log *slog.Logger, instrument func(trace.TracerProvider) error) (*sdktrace.TracerProvider, error) {
	// Like go-redis's logger (redisstore.SetLogger), these are
	// process-wide: one run per process makes them ours.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("opentelemetry", "component", "otel", "error", err)
	}))
	otel.SetLogger(logr.FromSlogHandler(log.Handler()))
	tp, err := newTracerProvider(ctx, protocol, version)
	if err != nil {
		return nil, err
	}
	if instrument != nil {
		if err := instrument(tp); err != nil {
			return nil, errors.Join(err, tp.Shutdown(ctx))
		}
	}
	log.Info("tracing on: OTLP export", "protocol", protocol)
	return tp, nil
}

// Stop flushes the spans still queued and stops the exporter, with
// a bound of its own: the run's context is over by now.
func Stop(tp *sdktrace.TracerProvider, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		log.Warn("flushing the last spans failed", "error", err)
	}
}
