package tracing

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// env is an environment for Enabled's getenv.
type env map[string]string

func (e env) get(name string) string { return e[name] }

func TestEnabled(t *testing.T) {
	tests := []struct {
		name     string
		env      env
		on       bool
		protocol string
		err      string
	}{
		{"off by default", env{}, false, "", ""},
		{"an endpoint turns it on, OTLP/HTTP by default", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, true, "http/protobuf", ""},
		{"a traces endpoint too", env{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, true, "http/protobuf", ""},
		{"the exporter named", env{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, "grpc", ""},
		{"the traces protocol wins", env{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, "http/protobuf", ""},
		{"none", env{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false, "", ""},
		{"SDK disabled", env{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false, "", ""},
		{"another exporter is refused", env{"OTEL_TRACES_EXPORTER": "zipkin"}, false, "", "otlp only"},
		{"another protocol is refused", env{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, false, "", "grpc or http/protobuf"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			protocol, on, err := Enabled(tc.env.get)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.on, on)
			require.Equal(t, tc.protocol, protocol)
		})
	}
}
