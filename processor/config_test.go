package processor

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestParseStatusSet(t *testing.T) {
	t.Run("classes and codes", func(t *testing.T) {
		set, err := ParseStatusSet(" 5XX, 408 ,425,429,")
		require.NoError(t, err)
		for _, in := range []int{500, 502, 599, 408, 425, 429} {
			require.True(t, set.Contains(in), in)
		}
		for _, out := range []int{200, 404, 409, 499, 600, 0, -1} {
			require.False(t, set.Contains(out), out)
		}
		require.Equal(t, " 5XX, 408 ,425,429,", set.String())
	})
	t.Run("empty set", func(t *testing.T) {
		set, err := ParseStatusSet("")
		require.NoError(t, err)
		require.False(t, set.Contains(500))
	})
	t.Run("default", func(t *testing.T) {
		set := DefaultConfig().NoStore
		for _, notProcessed := range []int{408, 425, 429} {
			require.True(t, set.Contains(notProcessed), notProcessed)
		}
		for _, stored := range []int{201, 500, 502, 503, 504} {
			require.False(t, set.Contains(stored), "a %d may come after the side effect: stored, never re-run", stored)
		}
	})
	for _, bad := range []string{"600", "99", "abc", "6xx", "0xx", "5xxx", "5x", "50x", "4 04", "-500"} {
		t.Run("rejects "+bad, func(t *testing.T) {
			_, err := ParseStatusSet(bad)
			require.Error(t, err)
			require.Panics(t, func() { MustParseStatusSet(bad) })
		})
	}
}

func TestConfig_Validate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
	tests := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"no key header", func(c *Config) { c.KeyHeaders = nil }, "at least one key header"},
		{"upper-case key header", func(c *Config) { c.KeyHeaders = []string{"Idempotency-Key"} }, "lower-case token"},
		{"bad scope header", func(c *Config) { c.ScopeHeaders = []string{"x tenant"} }, "lower-case token"},
		{"lock TTL under a second", func(c *Config) { c.LockTTL = 500 * time.Millisecond; c.Heartbeat = 100 * time.Millisecond }, "at least 1s"},
		{"zero heartbeat", func(c *Config) { c.Heartbeat = 0 }, "heartbeat"},
		{"heartbeat equal to the lock TTL", func(c *Config) { c.Heartbeat = c.LockTTL }, "shorter than the lock TTL"},
		{"retention under the lock TTL", func(c *Config) { c.Retention = time.Second }, "retention"},
		{"negative body cap", func(c *Config) { c.MaxStoredBody = -1 }, "must not be negative"},
		{"zero store timeout", func(c *Config) { c.StoreTimeout = 0 }, "timeouts must be positive"},
		{"zero finalize timeout", func(c *Config) { c.FinalizeTimeout = 0 }, "timeouts must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mut(&cfg)
			err := cfg.Validate()
			require.ErrorContains(t, err, tc.want)
		})
	}
	t.Run("reports every problem", func(t *testing.T) {
		err := Config{}.Validate()
		require.ErrorContains(t, err, "key header")
		require.ErrorContains(t, err, "lock TTL")
		require.ErrorContains(t, err, "timeouts")
	})
}

func TestNew(t *testing.T) {
	t.Run("invalid config", func(t *testing.T) {
		_, err := New(Config{}, Options{Store: newFakeStore()})
		require.ErrorContains(t, err, "invalid config")
	})
	t.Run("no store", func(t *testing.T) {
		_, err := New(DefaultConfig(), Options{})
		require.ErrorContains(t, err, "store is required")
	})
	t.Run("defaults for metrics and logger", func(t *testing.T) {
		srv, err := New(DefaultConfig(), Options{Store: newFakeStore()})
		require.NoError(t, err)
		require.NotNil(t, srv.metrics)
		require.NotNil(t, srv.log)
	})
}

func TestHeaderFilter_storable(t *testing.T) {
	in := []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte("200")},
		{Key: "content-type", RawValue: []byte("application/json")},
		{Key: "connection", RawValue: []byte("keep-alive, X-Trace ,close")},
		{Key: "keep-alive", RawValue: []byte("timeout=5")},
		{Key: "x-trace", RawValue: []byte("abc")},
		{Key: "transfer-encoding", RawValue: []byte("chunked")},
		{Key: "content-length", RawValue: []byte("12")},
		{Key: "date", RawValue: []byte("Mon, 01 Jan 2024 00:00:00 GMT")},
		{Key: "set-cookie", RawValue: []byte("a=1")},
		{Key: "x-internal", RawValue: []byte("1")},
		{Key: "x-envoy-upstream-service-time", RawValue: []byte("4")},
		{Key: "idempotent-replayed", RawValue: []byte("true")},
		{Key: "link", RawValue: []byte("<a>")},
		{Key: "link", RawValue: []byte("<b>")},
		{Key: "x-legacy", Value: "from value"},
		{Key: "", RawValue: []byte("nameless")},
		{Key: "link", RawValue: []byte("<c>")},
	}
	cfg := DefaultConfig()
	f := newHeaderFilter(append(cfg.ExcludeHeaders, "X-Internal"))
	require.Equal(t, []idem.Header{
		{Name: "content-type", Value: "application/json"},
		{Name: "link", Value: "<a>"},
		{Name: "link", Value: "<b>"},
		{Name: "x-legacy", Value: "from value"},
		{Name: "link", Value: "<c>"},
	}, f.storable(in))
	require.Empty(t, f.storable(nil))
}

func TestRetryAfterSeconds(t *testing.T) {
	for ms, want := range map[int64]string{-5: "1", 0: "1", 1: "1", 999: "1", 1000: "1", 1001: "2", 29_500: "30"} {
		require.Equal(t, want, retryAfterSeconds(ms), "%d ms", ms)
	}
}

func TestState_String(t *testing.T) {
	require.Equal(t, "acquired", idem.StateAcquired.String())
	require.Equal(t, "in_progress", idem.StateInProgress.String())
	require.Equal(t, "completed", idem.StateCompleted.String())
	require.Equal(t, "unknown", idem.State(0).String())
}
