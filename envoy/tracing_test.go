package envoy

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/otlpsink"
)

// envoyTracing adds Envoy's OpenTelemetry tracer to the connection
// manager, exporting over OTLP/gRPC to otlpAddr, every request sampled.
func envoyTracing(otlpAddr string) [][2]string {
	_, port, _ := strings.Cut(otlpAddr, ":")
	return [][2]string{
		{"          stat_prefix: ingress\n", `          stat_prefix: ingress
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: envoy
                grpc_service:
                  envoy_grpc: { cluster_name: otlp }
                  timeout: 1s
`},
		{"  clusters:\n", `  clusters:
  - name: otlp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: otlp
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: ` + port + ` }
`},
	}
}

// TestTracing_oneRequestIsOneTrace: Envoy (OTLP/gRPC) and idemproxy
// (OTLP/HTTP) export to one receiver; a keyed request yields one trace in
// which Envoy's spans lead to idemproxy's stream span and that to the
// Redis calls made for it.
func TestTracing_oneRequestIsOneTrace(t *testing.T) {
	t.Parallel()
	sink := otlpsink.New(t)
	s := startStackWith(t, stackConfig{
		envoyEdits: envoyTracing(sink.GRPCAddr),
		idemproxyEnv: []string{
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://" + sink.HTTPAddr + "/v1/traces",
			"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_BSP_SCHEDULE_DELAY=100",
		},
	})
	require.Contains(t, s.idemproxy.Output(), `"msg":"tracing on: OTLP export","protocol":"http/protobuf"`)

	key := newKey(t)
	first := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
	require.Equal(t, http.StatusOK, first.status)
	again := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
	require.True(t, again.replayed())

	for _, outcome := range []string{"acquired", "replayed"} {
		t.Run(outcome, func(t *testing.T) {
			var proc otlpsink.Span
			var trace []otlpsink.Span
			// Envoy flushes its spans every 5 s, or after 5 of them.
			testenv.WaitFor(t, 20*time.Second, "a complete trace of the "+outcome+" request", func() bool {
				var err error
				proc, err = sink.Find(func(sp otlpsink.Span) bool {
					return sp.Service == "idemproxy" && sp.Attrs["idemproxy.outcome"] == outcome
				})
				if err != nil {
					return false
				}
				trace = sink.Trace(proc.TraceID)
				return hasRoot(trace, "envoy")
			})
			t.Logf("the %s request's trace:\n%s", outcome, tree(trace))

			byID := map[string]otlpsink.Span{}
			for _, sp := range trace {
				byID[sp.SpanID] = sp
			}
			require.Equal(t, "envoy.service.ext_proc.v3.ExternalProcessor/Process", proc.Name)
			parent, ok := byID[proc.ParentID]
			require.True(t, ok, "idemproxy's span has its parent in the trace")
			require.Equal(t, "envoy", parent.Service, "and the parent is Envoy's span for the ext_proc call")
			for up := parent; up.ParentID != ""; up = byID[up.ParentID] {
				require.Contains(t, byID, up.ParentID, "every Envoy span's parent is in the trace")
				require.Equal(t, "envoy", byID[up.ParentID].Service)
			}
			// A call's parent is the stream span; a connection it had to
			// open shows as its own child (the handshake).
			var calls []otlpsink.Span
			for _, sp := range trace {
				if sp.Attrs["db.system"] != "redis" {
					continue
				}
				require.NotContains(t, sp.Attrs, "db.statement", "never the arguments: keys, tokens, bodies")
				if sp.ParentID == proc.SpanID {
					calls = append(calls, sp)
					continue
				}
				require.Equal(t, "redis", byID[sp.ParentID].Attrs["db.system"], "a Redis span outside a stream span: %+v", sp)
				require.Equal(t, proc.SpanID, byID[sp.ParentID].ParentID)
			}
			for _, sp := range trace {
				for k, v := range sp.Attrs {
					require.NotContains(t, v, key, "the key is never in a span (%s)", k)
				}
			}
			if outcome == "acquired" {
				require.Equal(t, "stored", proc.Attrs["idemproxy.result"])
				require.Equal(t, "1", proc.Attrs["idemproxy.fence"])
				// acquire and complete, each EVALSHA then, on a fresh Redis,
				// EVAL after NOSCRIPT
				require.GreaterOrEqual(t, len(calls), 2, "acquire and complete")
			} else {
				require.Len(t, calls, 1, "acquire only: the replay comes from its answer")
			}
		})
	}
}

func hasRoot(spans []otlpsink.Span, service string) bool {
	for _, sp := range spans {
		if sp.ParentID == "" && sp.Service == service {
			return true
		}
	}
	return false
}

// tree prints a trace as an indented list of service, name and attributes.
func tree(spans []otlpsink.Span) string {
	kids := map[string][]otlpsink.Span{}
	for _, sp := range spans {
		kids[sp.ParentID] = append(kids[sp.ParentID], sp)
	}
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		sort.Slice(kids[parent], func(i, j int) bool { return kids[parent][i].Start.Before(kids[parent][j].Start) })
		for _, sp := range kids[parent] {
			var attrs []string
			for k, v := range sp.Attrs {
				if strings.HasPrefix(k, "idemproxy.") || k == "db.system" || k == "http.response.status_code" || k == "upstream_cluster" {
					attrs = append(attrs, k+"="+v)
				}
			}
			sort.Strings(attrs)
			fmt.Fprintf(&b, "%s%s %q span=%s parent=%s %s %v\n", strings.Repeat("  ", depth), sp.Service, sp.Name,
				sp.SpanID, sp.ParentID, sp.Duration.Round(10*time.Microsecond), attrs)
			walk(sp.SpanID, depth+1)
		}
	}
	walk("", 0)
	return b.String()
}
