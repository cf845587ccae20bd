package processor

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// benchStream replays a fixed message sequence and discards the replies:
// the cheapest stream possible, so the benchmark measures the processor.
type benchStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*extprocv3.ProcessingRequest
	next int
}

func (s *benchStream) Context() context.Context { return s.ctx }

func (s *benchStream) Recv() (*extprocv3.ProcessingRequest, error) {
	if s.next == len(s.msgs) {
		return nil, io.EOF
	}
	s.next++
	return s.msgs[s.next-1], nil
}

func (s *benchStream) Send(*extprocv3.ProcessingResponse) error { return nil }

// memStore is a minimal Store: enough state for the flows benchmarked.
type memStore struct {
	mu   sync.Mutex
	recs map[string]*idem.Record
	fps  map[string][]byte
	n    atomic.Int64
}

func (m *memStore) Acquire(_ context.Context, key string, c idem.Claim) (idem.Acquisition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rec, ok := m.recs[key]; ok {
		return idem.Acquisition{State: idem.StateCompleted, Fingerprint: m.fps[key], Record: rec}, nil
	}
	m.fps[key] = c.Fingerprint
	return idem.Acquisition{State: idem.StateAcquired, Fence: m.n.Add(1)}, nil
}
func (m *memStore) Renew(context.Context, string, string, idem.Lease) error { return nil }
func (m *memStore) Peek(context.Context, string) (idem.Acquisition, error) {
	return idem.Acquisition{State: idem.StateFree}, nil
}
func (m *memStore) Complete(_ context.Context, key, _ string, rec idem.Record, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := rec
	m.recs[key] = &r
	return nil
}
func (m *memStore) Release(context.Context, string, string) error                { return nil }
func (m *memStore) Abandon(context.Context, string, string, time.Duration) error { return nil }

func benchServer(b *testing.B) (*Server, *memStore) {
	store := &memStore{recs: map[string]*idem.Record{}, fps: map[string][]byte{}}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(DefaultConfig(), Options{Store: store, Metrics: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	return srv, store
}

// flow is one request as Envoy streams it: headers, buffered body, then
// the response headers and two streamed chunks.
func flow(key string) []*extprocv3.ProcessingRequest {
	hs := []string{":method", "POST", ":path", "/charge", ":authority", "api.example.com", ":scheme", "http",
		"content-type", "application/json", "user-agent", "bench", "x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"}
	if key != "" {
		hs = append(hs, "idempotency-key", key)
	}
	return []*extprocv3.ProcessingRequest{
		reqHeaders(false, hs...),
		reqBody(`{"amount":5000,"currency":"usd"}`, true),
		respHeaders(false, ":status", "200", "content-type", "application/json", "x-charge-step", "validated",
			"x-charge-step", "captured", "set-cookie", "session=demo", "date", "Thu, 26 Nov 2026 20:00:00 GMT"),
		respBody(`{"id":"ch_0123456789ab","amount":5000,`, false),
		respBody(`"currency":"usd","status":"succeeded"}`, true),
	}
}

func BenchmarkServer_Process(b *testing.B) {
	b.Run("new key", func(b *testing.B) {
		srv, _ := benchServer(b)
		msgs := make([][]*extprocv3.ProcessingRequest, b.N)
		for i := range msgs {
			msgs[i] = flow("key-" + strconv.Itoa(i))
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			_ = srv.Process(&benchStream{ctx: b.Context(), msgs: msgs[i]})
		}
	})
	b.Run("replay", func(b *testing.B) {
		srv, _ := benchServer(b)
		_ = srv.Process(&benchStream{ctx: b.Context(), msgs: flow("replayed")})
		req := flow("replayed")[:2]
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			_ = srv.Process(&benchStream{ctx: b.Context(), msgs: req})
		}
	})
	b.Run("no key", func(b *testing.B) {
		srv, _ := benchServer(b)
		req := flow("")[:1]
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			_ = srv.Process(&benchStream{ctx: b.Context(), msgs: req})
		}
	})
}
