package replay

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// fakeTaker holds records by token, each usable once.
type fakeTaker struct {
	mu   sync.Mutex
	recs map[string]*idem.Record
}

var _ Taker = (*fakeTaker)(nil)

func (f *fakeTaker) TakeReplay(_ context.Context, token string) (*idem.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec, ok := f.recs[token]
	if !ok {
		return nil, idem.ErrNoReplay
	}
	delete(f.recs, token)
	return rec, nil
}

// start serves h on a free port; it returns an h2c client and the base URL.
func start(t *testing.T, opts Options) (*http.Client, string) {
	t.Helper()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Registerer = prometheus.NewRegistry()
	h, err := NewHandler(opts)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewServer(h)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true) // h2c, as Envoy speaks it
	return &http.Client{Transport: tr}, "http://" + ln.Addr().String()
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/pay.v1.Pay/Charge", strings.NewReader("ignored"))
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

func TestHandler_ServeHTTP(t *testing.T) {
	rec := &idem.Record{Status: 200, BodyStored: true, Trailers: true, Body: []byte("\x00\x00\x00\x00\x02hi"),
		Headers:        []idem.Header{{Name: "content-type", Value: "application/grpc"}, {Name: "x-a", Value: "1"}, {Name: "x-a", Value: "2"}},
		TrailerHeaders: []idem.Header{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}, {Name: "x-t", Value: "a"}, {Name: "x-t", Value: "b"}}}
	taker := &fakeTaker{recs: map[string]*idem.Record{"tok": rec}}
	c, url := start(t, Options{Taker: taker, Tokens: func() []string { return []string{"0123456789abcdef-secret"} }})

	t.Run("without the bearer token: 401, the token is not taken", func(t *testing.T) {
		resp, _ := get(t, c, url, Header, "tok")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		resp, _ = get(t, c, url, Header, "tok", "authorization", "Bearer wrong-wrong-wrong-wrong")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		require.Contains(t, taker.recs, "tok")
	})
	t.Run("the stored response with its trailers, once", func(t *testing.T) {
		resp, body := get(t, c, url, Header, "tok", "authorization", "Bearer 0123456789abcdef-secret")
		require.Equal(t, 2, resp.ProtoMajor)
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, string(rec.Body), body)
		require.Equal(t, "application/grpc", resp.Header.Get("content-type"))
		require.Equal(t, []string{"1", "2"}, resp.Header.Values("x-a"))
		require.Equal(t, "true", resp.Header.Get(replayedHeader))
		require.Equal(t, "0", resp.Trailer.Get("grpc-status"))
		require.Equal(t, []string{""}, resp.Trailer.Values("grpc-message"))
		require.Equal(t, []string{"a", "b"}, resp.Trailer.Values("x-t"))

		resp, body = get(t, c, url, Header, "tok", "authorization", "Bearer 0123456789abcdef-secret")
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Contains(t, body, "replay-unavailable")
	})
	t.Run("no Content-Type is made up for a body without one", func(t *testing.T) {
		taker.mu.Lock()
		taker.recs["plain"] = &idem.Record{Status: 201, BodyStored: true, Body: []byte("<html>")}
		taker.mu.Unlock()
		resp, body := get(t, c, url, Header, "plain", "authorization", "bearer 0123456789abcdef-secret")
		require.Equal(t, 201, resp.StatusCode)
		require.Equal(t, "<html>", body)
		require.Empty(t, resp.Header.Values("content-type"))
	})
}
