package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestMain fails the package if a test leaves a goroutine behind: run must
// stop its server and end in-flight slow requests on shutdown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// envMap stands in for os.LookupEnv.
type envMap map[string]string

func (m envMap) lookup(k string) (string, bool) {
	v, ok := m[k]
	return v, ok
}

func TestParseConfig(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		cfg, err := parseConfig(nil, envMap{}.lookup, io.Discard, io.Discard)
		require.NoError(t, err)
		require.Equal(t, config{addr: ":8081", slowDelay: 45 * time.Second, logLevel: slog.LevelInfo}, cfg)
	})

	t.Run("env vars replace defaults", func(t *testing.T) {
		env := envMap{envAddr: ":9000", envSlowDelay: "3s", envLogLevel: "debug"}
		cfg, err := parseConfig(nil, env.lookup, io.Discard, io.Discard)
		require.NoError(t, err)
		require.Equal(t, config{addr: ":9000", slowDelay: 3 * time.Second, logLevel: slog.LevelDebug}, cfg)
	})

	t.Run("flags win over env vars", func(t *testing.T) {
		env := envMap{envAddr: ":9000", envSlowDelay: "3s"}
		cfg, err := parseConfig([]string{"--addr", "127.0.0.1:7000", "--slow-delay=250ms", "--log-level=warn"},
			env.lookup, io.Discard, io.Discard)
		require.NoError(t, err)
		require.Equal(t, config{addr: "127.0.0.1:7000", slowDelay: 250 * time.Millisecond, logLevel: slog.LevelWarn}, cfg)
	})

	bad := []struct {
		name string
		args []string
		env  envMap
	}{
		{"unknown flag", []string{"--bogus"}, envMap{}},
		{"bad duration flag", []string{"--slow-delay", "soon"}, envMap{}},
		{"negative delay", []string{"--slow-delay=-1s"}, envMap{}},
		{"empty addr", []string{"--addr="}, envMap{}},
		{"bad log level", []string{"--log-level=loud"}, envMap{}},
		{"positional argument", []string{"extra"}, envMap{}},
		{"bad duration env var", nil, envMap{envSlowDelay: "soon"}},
		{"bad log level env var", nil, envMap{envLogLevel: "loud"}},
	}
	for _, tc := range bad {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, tc.env.lookup, io.Discard, io.Discard)
			var usage *usageError
			require.ErrorAs(t, err, &usage)
			require.True(t, strings.HasPrefix(err.Error(), "backend: "), err.Error())
		})
	}

	t.Run("help goes to stdout", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		_, err := parseConfig([]string{"-h"}, envMap{}.lookup, &stdout, &stderr)
		require.ErrorIs(t, err, flag.ErrHelp)
		require.Contains(t, stdout.String(), "-slow-delay")
		require.Empty(t, stderr.String())
	})
}

func TestRun_FlagErrors(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), []string{"--addr", "127.0.0.1:0", "--nope"}, io.Discard, &stderr)
	var usage *usageError
	require.ErrorAs(t, err, &usage)
	require.Contains(t, stderr.String(), "-addr", "usage is printed for a bad flag")
}

func TestRun_Help(t *testing.T) {
	var stdout bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"--help"}, &stdout, io.Discard))
	require.Contains(t, stdout.String(), "-addr")
}

// listeningAddr finds the address in the "listening" log line, or "".
func listeningAddr(logs string) string { return testenv.FindLogAddr(logs, "listening") }

func TestRun_ServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var logs testenv.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--log-level", "debug"}, io.Discard, &logs)
	}()

	var addr string
	require.Eventually(t, func() bool { addr = listeningAddr(logs.String()); return addr != "" },
		5*time.Second, 5*time.Millisecond, "no listening line in logs: %s", logs.String())
	base := "http://" + addr

	get := func(path string) (int, string) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+path, nil)
		require.NoError(t, err)
		req.Header.Set(headerIdempotencyKey, "run-key")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, body := get("/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok", body)
	code, _ = get("/charge?amount=99")
	require.Equal(t, http.StatusOK, code)
	code, body = get("/stats")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"total":1,"keys":{"run-key":1},"no_key":0,"stale_fences":{},"fences":{},"fenced_without_key":0}`, body)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatal("run did not return after its context was cancelled")
	}
	require.Contains(t, logs.String(), `"msg":"request"`, "debug level logs each request")
	require.Contains(t, logs.String(), `"msg":"stopped"`)
}

func TestRun_ShutdownEndsSlowRequests(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var logs testenv.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--addr=127.0.0.1:0", "--slow-delay=10m"}, io.Discard, &logs) }()

	var addr string
	require.Eventually(t, func() bool { addr = listeningAddr(logs.String()); return addr != "" },
		5*time.Second, 5*time.Millisecond)

	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/slow", nil)
		if err != nil {
			return
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}()
	// Wait until the slow request is executing before stopping the server.
	require.Eventually(t, func() bool {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/stats", nil)
		if err != nil {
			return false
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var s stats
		return json.NewDecoder(resp.Body).Decode(&s) == nil && s.Total == 1
	}, 5*time.Second, 5*time.Millisecond)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, "shutdown must not wait for the slow delay")
	case <-time.After(shutdownTimeout / 2):
		t.Fatal("run waited for the slow request instead of ending it")
	}
	testenv.Receive(t, slowDone, 5*time.Second, "the slow request to end")
}
