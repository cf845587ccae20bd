package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// touch moves a file's modification time on, as a rotation would, without
// depending on the file system's timestamp granularity.
func touch(t *testing.T, file string, at time.Time) {
	t.Helper()
	require.NoError(t, os.Chtimes(file, at, at))
}

// forgedHeaders is what a forger sends: a keyed request's headers.
func forgedHeaders(key string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true, Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":method", RawValue: []byte("POST")}, {Key: ":path", RawValue: []byte("/charge")},
			{Key: ":authority", RawValue: []byte("pay.example")}, {Key: "idempotency-key", RawValue: []byte(key)},
		}}}}}
}

// tryStream opens a Process stream with the given authorization metadata
// ("" for none), sends forged request headers and returns the reply or the
// stream's error.
func tryStream(t *testing.T, conn *grpc.ClientConn, authorization, key string) (*extprocv3.ProcessingResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	if authorization != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", authorization)
	}
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(forgedHeaders(key)); err != nil && err != io.EOF {
		return nil, err
	}
	return stream.Recv()
}

func TestRun_tokenAuth(t *testing.T) {
	rs := redistopo.Start(t)
	rdb := rs.Client(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("old-token-0123456789abcdef\n"), 0o600))
	logs := &testenv.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
			"--redis-url", rs.URL(), "--auth-token-file", tokenFile}, env{}.get, logs)
	}()
	t.Cleanup(func() {
		cancel()
		testenv.Receive(t, done, waitFor, "run to return")
	})
	grpcAddr := logAddr(t, logs, done, "grpc listening")
	adminAddr := logAddr(t, logs, done, "admin listening")
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	// Records and fence counters: the store-reset marker the health
	// check writes is not a request's.
	dbsize := func() int64 {
		keys, err := rdb.Keys(t.Context(), "idemproxy:{*").Result()
		require.NoError(t, err)
		return int64(len(keys))
	}

	t.Run("a forged stream without the token is refused and writes nothing", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Basic old-token-0123456789abcdef", "old-token-0123456789abcdef"} {
			_, err := tryStream(t, conn, auth, "forged")
			require.Equal(t, codes.Unauthenticated, status.Code(err), "authorization %q: %v", auth, err)
		}
		require.Zero(t, dbsize(), "nothing read from or written to Redis")
		require.EqualValues(t, 4, testenv.Metric(t, "http://"+adminAddr+"/metrics", "idemproxy_grpc_unauthenticated_total"))
		require.NotContains(t, logs.String(), "wrong-token", "a refused token is never logged")
	})
	t.Run("the health service needs no token", func(t *testing.T) {
		_, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
	})
	t.Run("the token (any case of Bearer) is served", func(t *testing.T) {
		resp, err := tryStream(t, conn, "bearer old-token-0123456789abcdef", "real")
		require.NoError(t, err)
		require.NotNil(t, resp.GetRequestHeaders(), "the request may go upstream")
		require.Positive(t, dbsize())
	})
	t.Run("rewriting the file rotates the token", func(t *testing.T) {
		require.NoError(t, os.WriteFile(tokenFile, []byte("old-token-0123456789abcdef\nnew-token-0123456789abcdef\n"), 0o600))
		touch(t, tokenFile, time.Now().Add(time.Minute))
		require.Eventually(t, func() bool {
			_, err := tryStream(t, conn, "Bearer new-token-0123456789abcdef", "k1")
			return err == nil
		}, waitFor, poll, "both tokens during the rotation")
		_, err := tryStream(t, conn, "Bearer old-token-0123456789abcdef", "k2")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(tokenFile, []byte("new-token-0123456789abcdef\n"), 0o600))
		touch(t, tokenFile, time.Now().Add(2*time.Minute))
		require.Eventually(t, func() bool {
			_, err := tryStream(t, conn, "Bearer old-token-0123456789abcdef", "k3")
			return status.Code(err) == codes.Unauthenticated
		}, waitFor, poll, "the old token retired")
	})
	t.Run("a broken rotation keeps the last good tokens", func(t *testing.T) {
		require.NoError(t, os.WriteFile(tokenFile, []byte("\n"), 0o600))
		touch(t, tokenFile, time.Now().Add(3*time.Minute))
		require.Eventually(t, func() bool {
			_, _ = tryStream(t, conn, "Bearer new-token-0123456789abcdef", "k4") // a look at the file
			m, err := testenv.ReadMetric(t.Context(), http.DefaultClient, "http://"+adminAddr+"/metrics", `idemproxy_auth_token_reloads_total{result="error"}`)
			return err == nil && m == 1
		}, waitFor, poll)
		_, err := tryStream(t, conn, "Bearer new-token-0123456789abcdef", "k5")
		require.NoError(t, err)
	})
}

func TestRun_refusesAnOpenPort(t *testing.T) {
	err := run(t.Context(), []string{"--grpc-addr", "0.0.0.0:0", "--admin-addr", "127.0.0.1:0"}, env{}.get, io.Discard)
	var usage usageError
	require.ErrorAs(t, err, &usage, "exit 2")
	require.ErrorContains(t, err, "--auth-token-file")
}
