package processor

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// waitFor bounds every wait on the processor; nothing here is slow.
const waitFor = 5 * time.Second

const testAuthority = "api.example.com"

// newTestServer builds a Server on store with the defaults, changed by mut,
// and its own metrics registry; a store that is also a Watcher watches.
func newTestServer(t *testing.T, store Store, mut func(*Config)) (*Server, *prometheus.Registry) {
	t.Helper()
	return newServerWith(t, store, mut, func(o *Options) {
		if w, ok := store.(Watcher); ok {
			o.Watcher = w
		}
	})
}

// newServerWith builds a Server on store with the defaults changed by mut,
// its options (a discarding logger, its own metrics) changed by opt.
func newServerWith(t *testing.T, store Store, mut func(*Config), opt func(*Options)) (*Server, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	if mut != nil {
		mut(&cfg)
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	require.NoError(t, err)
	opts := Options{Store: store, Metrics: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	opt(&opts)
	srv, err := New(cfg, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		// Pending completions (pending.go) end with the server.
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		srv.Drain(ctx)
	})
	return srv, reg
}

// session is one Process call running on a fake stream.
type session struct {
	t    *testing.T
	st   *fakeStream
	done chan error
}

// serve starts Process in the background; the test ends it with end().
func serve(t *testing.T, srv *Server) *session {
	return serveStream(t, srv, newFakeStream(t.Context()))
}

func serveStream(t *testing.T, srv *Server, st *fakeStream) *session {
	t.Helper()
	s := &session{t: t, st: st, done: make(chan error, 1)}
	go func() { s.done <- srv.Process(st) }()
	t.Cleanup(func() {
		st.cancel()
		select {
		case <-s.done:
		case <-time.After(waitFor):
			t.Error("Process did not return after the stream was canceled")
		}
	})
	return s
}

func (s *session) send(req *extprocv3.ProcessingRequest) { s.st.in <- streamItem{req: req} }

// reply waits for the next reply Process sends.
func (s *session) reply() *extprocv3.ProcessingResponse {
	s.t.Helper()
	select {
	case r := <-s.st.out:
		return r
	case <-time.After(waitFor):
		s.t.Fatal("no reply from Process")
		return nil
	}
}

func (s *session) roundTrip(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	s.t.Helper()
	s.send(req)
	return s.reply()
}

// endKind is how Envoy ends the side stream.
type endKind string

const (
	endEOF      endKind = "half-close"
	endCanceled endKind = "reset"
)

var endKinds = []endKind{endEOF, endCanceled}

// end queues the end of the stream after whatever was sent.
func (s *session) end(kind endKind) {
	if kind == endEOF {
		s.st.in <- streamItem{err: io.EOF}
		return
	}
	s.st.in <- streamItem{err: status.Error(codes.Canceled, "context canceled"), cancelFirst: true}
}

// wait returns what Process returned.
func (s *session) wait() error {
	s.t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(waitFor):
		s.t.Fatal("Process did not return")
		return nil
	}
}

// run sends reqs, ends the stream and returns every reply and Process's result.
func run(t *testing.T, srv *Server, kind endKind, reqs ...*extprocv3.ProcessingRequest) ([]*extprocv3.ProcessingResponse, error) {
	t.Helper()
	s := serve(t, srv)
	for _, r := range reqs {
		s.send(r)
	}
	s.end(kind)
	err := s.wait()
	var out []*extprocv3.ProcessingResponse
	for len(s.st.out) > 0 {
		out = append(out, <-s.st.out)
	}
	return out, err
}

// headerMap builds a HeaderMap from name, value pairs as current Envoy
// sends it: in raw_value.
func headerMap(kv ...string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return m
}

func reqHeaders(eos bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: eos}}}
}

// keyed is a request with the usual pseudo-headers and the given key.
func keyed(method, key string, eos bool) *extprocv3.ProcessingRequest {
	return reqHeaders(eos, ":method", method, ":path", "/charge?x=1", ":authority", testAuthority,
		":scheme", "http", "idempotency-key", key)
}

func reqBody(body string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}}}
}

func respHeaders(eos bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: eos}}}
}

func respBody(body string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}}}
}

// keyOf is the store key the processor derives for testAuthority and key.
func keyOf(key string) string { return storeKey([]string{testAuthority}, key) }

// keyOfCredential is keyOf for a request with this Authorization header.
func keyOfCredential(authorization, key string) string {
	return storeKey([]string{testAuthority, credentialID(authorization)}, key)
}

// requireContinue checks a plain CONTINUE without override; the only
// mutation allowed is the fencing header sent upstream with a grant.
func requireContinue(t *testing.T, resp *extprocv3.ProcessingResponse) {
	t.Helper()
	require.NotNil(t, resp)
	require.Nil(t, resp.GetImmediateResponse(), "want CONTINUE, got an immediate response")
	require.Nil(t, resp.GetModeOverride())
	common, ok := commonOf(resp)
	require.True(t, ok, "unexpected reply %T", resp.GetResponse())
	require.Equal(t, extprocv3.CommonResponse_CONTINUE, common.GetStatus())
	for _, h := range common.GetHeaderMutation().GetSetHeaders() {
		require.Equal(t, "idempotency-fence", h.GetHeader().GetKey())
	}
	for _, h := range common.GetHeaderMutation().GetRemoveHeaders() {
		require.Equal(t, "idempotency-fence", h)
	}
	require.Nil(t, common.GetBodyMutation())
}

// immediateOf returns the immediate reply and its headers in order,
// checking they travel in raw_value only.
func immediateOf(t *testing.T, resp *extprocv3.ProcessingResponse) (*extprocv3.ImmediateResponse, []idem.Header) {
	t.Helper()
	ir := resp.GetImmediateResponse()
	require.NotNil(t, ir, "want an immediate response, got %T", resp.GetResponse())
	var hs []idem.Header
	for _, o := range ir.GetHeaders().GetSetHeaders() {
		require.Empty(t, o.GetHeader().GetValue(), "header %q must use raw_value only", o.GetHeader().GetKey())
		hs = append(hs, idem.Header{Name: o.GetHeader().GetKey(), Value: string(o.GetHeader().GetRawValue())})
	}
	return ir, hs
}

func headerGet(hs []idem.Header, name string) string {
	for _, h := range hs {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

// requireProblem checks an RFC 9457 reply and returns its body.
func requireProblem(t *testing.T, resp *extprocv3.ProcessingResponse, code int, slug string) (problem, []idem.Header) {
	t.Helper()
	ir, hs := immediateOf(t, resp)
	require.EqualValues(t, code, ir.GetStatus().GetCode())
	require.Equal(t, "application/problem+json", headerGet(hs, "content-type"))
	require.Equal(t, "urn:idemproxy:problem:"+slug, headerGet(hs, problemHeader), "the type travels in a header too")
	var p problem
	require.NoError(t, json.Unmarshal(ir.GetBody(), &p))
	require.Equal(t, "urn:idemproxy:problem:"+slug, p.Type)
	require.Equal(t, code, p.Status)
	require.NotEmpty(t, p.Title)
	require.NotEmpty(t, p.Detail)
	return p, hs
}

// requireSkipRest checks the override that ends processing of a request.
func requireSkipRest(t *testing.T, m *filterv3.ProcessingMode) {
	t.Helper()
	require.NotNil(t, m)
	require.Equal(t, filterv3.ProcessingMode_SEND, m.GetRequestHeaderMode())
	require.Equal(t, filterv3.ProcessingMode_SKIP, m.GetResponseHeaderMode())
	require.Equal(t, filterv3.ProcessingMode_NONE, m.GetRequestBodyMode())
	require.Equal(t, filterv3.ProcessingMode_NONE, m.GetResponseBodyMode())
	require.Equal(t, filterv3.ProcessingMode_SKIP, m.GetRequestTrailerMode())
	require.Equal(t, filterv3.ProcessingMode_SKIP, m.GetResponseTrailerMode())
}

// counter reads one labelled counter from reg.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	return labelled(t, reg, name, label, value).GetCounter().GetValue()
}

// labelled is the series of metric name whose label has value.
func labelled(t *testing.T, reg *prometheus.Registry, name, label, value string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m
				}
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return nil
}

// gauge reads an unlabelled gauge from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not found", name)
	return 0
}

// watchdogRunning reports whether any of srv's watchdogs is still active.
func watchdogRunning(srv *Server) bool { return srv.watchdogs.Load() > 0 }

// fenceOf returns the fencing header a CONTINUE sets, "" when none, and
// whether it removes a client's.
func fenceOf(resp *extprocv3.ProcessingResponse) (set string, removed bool) {
	common, _ := commonOf(resp)
	for _, h := range common.GetHeaderMutation().GetSetHeaders() {
		set = string(h.GetHeader().GetRawValue())
	}
	return set, len(common.GetHeaderMutation().GetRemoveHeaders()) > 0
}

// commonOf returns the CommonResponse of a headers or body reply; false for
// any other kind.
func commonOf(resp *extprocv3.ProcessingResponse) (*extprocv3.CommonResponse, bool) {
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return r.RequestHeaders.GetResponse(), true
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return r.ResponseHeaders.GetResponse(), true
	case *extprocv3.ProcessingResponse_RequestBody:
		return r.RequestBody.GetResponse(), true
	case *extprocv3.ProcessingResponse_ResponseBody:
		return r.ResponseBody.GetResponse(), true
	}
	return nil, false
}
