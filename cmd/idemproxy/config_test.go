package main

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/processor"
)

// env is a fake environment for parseSettings.
type env map[string]string

func (e env) get(name string) string { return e[name] }

func TestParseSettings_defaults(t *testing.T) {
	// The default listen address is every interface: it needs a token or
	// mutual TLS (TestParseSettings_openPort), or this explicit opt-out.
	s, err := parseSettings([]string{"--allow-unauthenticated"}, env{}.get, io.Discard)
	require.NoError(t, err)
	require.Equal(t, ":50051", s.GRPCAddr)
	require.Equal(t, ":9090", s.AdminAddr)
	require.Equal(t, "redis://127.0.0.1:6379/0", s.RedisURL)
	require.Equal(t, time.Second, s.RedisTimeout)
	require.Equal(t, "idemproxy:", s.RedisPrefix)
	require.True(t, s.Reflection)
	require.Equal(t, 16<<20, s.MaxMessageBytes)
	require.Equal(t, slog.LevelInfo, s.LogLevel)

	p := s.Processor
	require.Equal(t, 30*time.Second, p.LockTTL)
	require.Equal(t, 10*time.Second, p.Heartbeat)
	require.Equal(t, 24*time.Hour, p.Retention)
	require.Equal(t, []string{"idempotency-key", "x-idempotency-key"}, p.KeyHeaders)
	require.Empty(t, p.ScopeHeaders)
	require.Empty(t, p.Methods)
	require.Equal(t, 1<<20, p.MaxStoredBody)
	require.False(t, p.FailOpen)
	require.Equal(t, []string{"set-cookie"}, p.ExcludeHeaders)
	require.False(t, p.NoStore.Contains(500), "a 5xx is an outcome: stored, never re-run")
	require.True(t, p.NoStore.Contains(429))
	require.False(t, p.NoStore.Contains(404))
	require.Equal(t, s.RedisTimeout, p.StoreTimeout, "the store timeout follows --redis-timeout")
	require.Equal(t, "hold", s.OnUnknown)
	require.Equal(t, processor.OnUnknownHold, p.OnUnknown, "unknown outcomes are held by default: never run twice")
	require.False(t, s.AllowEvicting, "an evicting Redis is refused by default")
	require.Equal(t, time.Minute, s.HeldKeysEvery)
}

func TestParseSettings_flagsAndEnv(t *testing.T) {
	getenv := env{
		"IDEMPROXY_GRPC_ADDR":         ":1111",
		"IDEMPROXY_ADMIN_ADDR":        ":2222",
		"IDEMPROXY_LOCK_TTL":          "40s",
		"IDEMPROXY_FAIL_OPEN":         "true",
		"IDEMPROXY_KEY_HEADERS":       "Idem-Key, X-Other-Key ,",
		"IDEMPROXY_METHODS":           "post,put",
		"IDEMPROXY_NO_STORE_STATUSES": "5xx",
		"IDEMPROXY_LOG_LEVEL":         "debug",
		"IDEMPROXY_REDIS_TIMEOUT":     "250ms",
	}.get
	s, err := parseSettings([]string{
		"--grpc-addr", "127.0.0.1:3333",
		"-heartbeat=5s",
		"--scope-headers=x-tenant-id",
		"--max-body-bytes", "2048",
		"--reflection=false",
	}, getenv, io.Discard)
	require.NoError(t, err)

	require.Equal(t, "127.0.0.1:3333", s.GRPCAddr, "a flag wins over its env var")
	require.Equal(t, ":2222", s.AdminAddr, "the env var fills a flag not given")
	require.Equal(t, 40*time.Second, s.Processor.LockTTL)
	require.Equal(t, 5*time.Second, s.Processor.Heartbeat)
	require.True(t, s.Processor.FailOpen)
	require.Equal(t, []string{"idem-key", "x-other-key"}, s.Processor.KeyHeaders)
	require.Equal(t, []string{"x-tenant-id"}, s.Processor.ScopeHeaders)
	require.Equal(t, []string{"POST", "PUT"}, s.Processor.Methods)
	require.Equal(t, 2048, s.Processor.MaxStoredBody)
	require.False(t, s.Reflection)
	require.True(t, s.Processor.NoStore.Contains(502))
	require.False(t, s.Processor.NoStore.Contains(429))
	require.Equal(t, slog.LevelDebug, s.LogLevel)
	require.Equal(t, 250*time.Millisecond, s.Processor.StoreTimeout)
}

func TestParseSettings_flagWinsOverBadEnv(t *testing.T) {
	// A broken env var is ignored when its flag is given.
	s, err := parseSettings([]string{"--lock-ttl", "20s", "--allow-unauthenticated"}, env{"IDEMPROXY_LOCK_TTL": "soon"}.get, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 20*time.Second, s.Processor.LockTTL)
}

func TestParseSettings_usageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  env
		want string
	}{
		{"bad duration", []string{"--lock-ttl", "soon"}, nil, "invalid value"},
		{"bad duration in env", nil, env{"IDEMPROXY_RETENTION": "forever"}, "IDEMPROXY_RETENTION"},
		{"heartbeat equal to the lock TTL", []string{"--heartbeat", "30s"}, nil, "heartbeat"},
		{"heartbeat over the lock TTL", []string{"--lock-ttl", "5s", "--heartbeat", "6s"}, nil, "heartbeat"},
		{"lock TTL under a second", []string{"--lock-ttl", "500ms", "--heartbeat", "100ms"}, nil, "lock TTL"},
		{"bad redis URL", []string{"--redis-url", "http://localhost:6379"}, nil, "--redis-url"},
		{"bad status set", []string{"--no-store-statuses", "5xx,600"}, nil, "600"},
		{"bad status set in env", nil, env{"IDEMPROXY_NO_STORE_STATUSES": "teapot"}, "teapot"},
		{"bad method", []string{"--methods", "GET,P0ST"}, nil, "not an HTTP method"},
		{"no key header", []string{"--key-headers", " , "}, nil, "key header"},
		{"bad key header", []string{"--key-headers", "idem key"}, nil, "lower-case token"},
		{"negative body cap", []string{"--max-body-bytes", "-1"}, nil, "negative"},
		{"small gRPC messages", []string{"--max-message-bytes", "1000"}, nil, "--max-message-bytes"},
		{"zero redis timeout", []string{"--redis-timeout", "0s"}, nil, "--redis-timeout"},
		{"empty listen address", []string{"--admin-addr", ""}, nil, "--admin-addr"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "log-level"},
		{"bad bool in env", nil, env{"IDEMPROXY_FAIL_OPEN": "maybe"}, "IDEMPROXY_FAIL_OPEN"},
		{"unknown flag", []string{"--nope"}, nil, "nope"},
		{"positional arguments", []string{"--fail-open", "extra"}, nil, "unexpected arguments"},
		{"unknown on-unknown policy", []string{"--on-unknown", "retry"}, nil, "must be hold or rerun-after-ttl"},
		{"the old expire policy is refused by name", []string{"--on-unknown", "expire"}, nil, "--on-unknown rerun-after-ttl"},
		{"negative held-keys interval", []string{"--held-keys-interval", "-1s"}, nil, "--held-keys-interval"},
		{"short admin token", []string{"--admin-token", "short"}, nil, "at least 16 characters"},
		{"missing admin token file", []string{"--admin-token-file", "/nonexistent/token"}, nil, "--admin-token-file"},
		{"bad fence header", []string{"--fence-header", "Not A Header"}, nil, "lower-case token"},
		{"certificate without key", []string{"--tls-cert", "/tmp/x.crt"}, nil, "go together"},
		{"client CA without a certificate", []string{"--tls-client-ca", "/tmp/ca.crt"}, nil, "needs --tls-cert"},
		{"redis CA without rediss", []string{"--redis-ca", "/tmp/ca.crt"}, nil, "rediss://"},
		{"bad encryption key", []string{"--encryption-keys", "k1:bm90LTMyLWJ5dGVz"}, nil, "32 bytes"},
		{"unknown error format", []string{"--error-format", "xml"}, nil, `--error-format "xml" must be problem, stripe or template`},
		{"template format without a template", []string{"--error-format", "template"}, nil, "needs --error-template-file"},
		{"missing error template", []string{"--error-template-file", "/nonexistent/t.json"}, nil, "--error-template-file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSettings(tc.args, tc.env.get, io.Discard)
			require.ErrorContains(t, err, tc.want)
			var usage usageError
			require.True(t, errors.As(err, &usage), "want a usageError (exit 2), got %T", err)
		})
	}
}

func TestParseSettings_help(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		_, err := parseSettings([]string{arg}, env{}.get, io.Discard)
		var early earlyExit
		require.ErrorAs(t, err, &early, "help is not a usage error: main exits 0")
		require.Contains(t, early.text, "IDEMPROXY_REDIS_URL")
	}
}

func TestListFlag(t *testing.T) {
	var dst []string
	f := listFlag{&dst}
	require.NoError(t, f.Set(" A ,b,, C"))
	require.Equal(t, []string{"a", "b", "c"}, dst)
	require.Equal(t, "a,b,c", f.String())

	require.NoError(t, f.Set("x"))
	require.Equal(t, []string{"x"}, dst, "a later value replaces the list")

	require.NoError(t, f.Set(""))
	require.Empty(t, dst)
	require.Equal(t, "", listFlag{}.String(), "the zero value prints empty")
}

func TestMethodsFlag(t *testing.T) {
	var dst []string
	f := methodsFlag{&dst}
	require.NoError(t, f.Set("post, Put ,patch"))
	require.Equal(t, []string{"POST", "PUT", "PATCH"}, dst)
	require.Equal(t, "POST,PUT,PATCH", f.String())
	require.Equal(t, "", methodsFlag{}.String())

	for _, bad := range []string{"GET,P0ST", "GET POST", "GET/1"} {
		require.Error(t, f.Set(bad), bad)
	}
}

func TestEnvName(t *testing.T) {
	require.Equal(t, "IDEMPROXY_GRPC_ADDR", envName("grpc-addr"))
	require.Equal(t, "IDEMPROXY_NO_STORE_STATUSES", envName("no-store-statuses"))
}

func TestParseSettings_emptySecretFiles(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	for _, flagName := range []string{"--admin-token-file", "--encryption-keys-file"} {
		t.Run(flagName+" that is empty is refused, never read as feature off", func(t *testing.T) {
			_, err := parseSettings([]string{flagName, empty}, func(string) string { return "" }, io.Discard)
			var usage usageError
			require.ErrorAs(t, err, &usage)
			require.ErrorContains(t, err, flagName+" "+empty+" is empty")
		})
	}
}

func TestParseSettings_openPort(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("# rotated 2026-12\nfirst-token-0123456789\nsecond-token-0123456789\n"), 0o600))
	t.Run("an unauthenticated port on every interface is refused, saying what to configure", func(t *testing.T) {
		for _, addr := range []string{":50051", "0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "idemproxy:50051"} {
			_, err := parseSettings([]string{"--grpc-addr", addr}, env{}.get, io.Discard)
			var usage usageError
			require.ErrorAs(t, err, &usage, addr)
			require.ErrorContains(t, err, "--auth-token-file", addr)
			require.ErrorContains(t, err, "--tls-client-ca", addr)
			require.ErrorContains(t, err, "--allow-unauthenticated", addr)
		}
	})
	t.Run("an unauthenticated replay port on every interface is refused too", func(t *testing.T) {
		_, err := parseSettings([]string{"--grpc-addr", "127.0.0.1:50051", "--replay-addr", ":50052"}, env{}.get, io.Discard)
		require.ErrorContains(t, err, "--replay-addr :50052")
		_, err = parseSettings([]string{"--grpc-addr", "127.0.0.1:50051", "--replay-addr", "127.0.0.1:50052"}, env{}.get, io.Discard)
		require.NoError(t, err)
		_, err = parseSettings([]string{"--replay-addr", ":50052", "--auth-token-file", tokenFile}, env{}.get, io.Discard)
		require.NoError(t, err)
	})
	t.Run("loopback, a token, mutual TLS or the opt-out are accepted", func(t *testing.T) {
		for _, args := range [][]string{
			{"--grpc-addr", "127.0.0.1:50051"},
			{"--grpc-addr", "[::1]:50051"},
			{"--grpc-addr", "localhost:50051"},
			{"--auth-token-file", tokenFile},
			{"--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"},
			{"--allow-unauthenticated"},
		} {
			_, err := parseSettings(args, env{}.get, io.Discard)
			require.NoError(t, err, "%v", args)
		}
		_, err := parseSettings(nil, env{"IDEMPROXY_AUTH_TOKEN_FILE": tokenFile}.get, io.Discard)
		require.NoError(t, err)
	})
	t.Run("a token file that cannot serve is refused at start", func(t *testing.T) {
		dir := t.TempDir()
		for name, content := range map[string]string{"empty": "\n# nothing\n", "short": "tooshort\n", "spaces": "a token with spaces in it\n"} {
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			_, err := parseSettings([]string{"--auth-token-file", path}, env{}.get, io.Discard)
			require.ErrorContains(t, err, "--auth-token-file", name)
		}
		_, err := parseSettings([]string{"--auth-token-file", filepath.Join(dir, "missing")}, env{}.get, io.Discard)
		require.ErrorContains(t, err, "--auth-token-file")
	})
}

func TestParseSettings_errorTemplate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"error":"{{detial}}"`), 0o600))
	_, err := parseSettings([]string{"--grpc-addr", "127.0.0.1:50051", "--error-format", "template", "--error-template-file", bad}, env{}.get, io.Discard)
	require.ErrorContains(t, err, "--error-template-file "+bad+": not JSON")
	require.NoError(t, os.WriteFile(bad, []byte(`{"error":"{{detial}}"}`), 0o600))
	_, err = parseSettings([]string{"--grpc-addr", "127.0.0.1:50051", "--error-template-file", bad}, env{}.get, io.Discard)
	require.ErrorContains(t, err, "unknown placeholder {{detial}}", "checked at start even when only routes use it")

	good := filepath.Join(dir, "good.json")
	require.NoError(t, os.WriteFile(good, []byte(`{"error":{"message":"{{detail}}","status":"{{status}}"}}`), 0o600))
	s, err := parseSettings([]string{"--grpc-addr", "127.0.0.1:50051"}, env{"IDEMPROXY_ERROR_FORMAT": "template", "IDEMPROXY_ERROR_TEMPLATE_FILE": good}.get, io.Discard)
	require.NoError(t, err)
	require.Equal(t, processor.ErrorFormatTemplate, s.Processor.ErrorFormat)
	require.NotNil(t, s.Processor.ErrorTemplate)
}
