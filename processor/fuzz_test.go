package processor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// The fuzz targets run their seeds and testdata/fuzz corpus with every
// `go test`; CI also runs each one for a few seconds with -fuzz
// (scripts/test.sh).

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"order-42", `"order-42"`, `"a\"b\\c"`, " \tk\t ", "", `""`, `"`, `"a`,
		`"a\nb"`, "a b", "a\x00b", "a\x7fb", "naïve", strings.Repeat("k", 255), strings.Repeat("k", 256),
		`"` + strings.Repeat("k", 255) + `"`, `"\"k"`, "\"a\tb\"", `"a"b"`} {
		f.Add(s)
	}
	keyErrs := []error{errKeyEmpty, errKeyTooLong, errKeyChars, errKeyQuoting}
	f.Fuzz(func(t *testing.T, raw string) {
		key, err := parseKey(raw)
		padded, paddedErr := parseKey(" \t" + raw + "\t ")
		require.Equal(t, key, padded, "blanks around a key never matter")
		require.Equal(t, err, paddedErr)
		if err != nil {
			require.True(t, errorIsAny(err, keyErrs), "unexpected error %v", err)
			require.Empty(t, key)
			return
		}
		require.GreaterOrEqual(t, len(key), 1)
		require.LessOrEqual(t, len(key), maxKeyLen)
		for i := 0; i < len(key); i++ {
			require.True(t, key[i] >= 0x21 && key[i] <= 0x7e, "byte %#x at %d is not visible ASCII", key[i], i)
		}
		quoted, err := parseKey(sfQuote(key))
		require.NoError(t, err, "the sf-string form of an accepted key is accepted")
		require.Equal(t, key, quoted, "quoted and bare forms are the same key")
		// A bare key cannot start with a double quote: that is the
		// sf-string form, and an RFC 8941 token never starts with one.
		if key[0] != '"' {
			bare, err := parseKey(key)
			require.NoError(t, err)
			require.Equal(t, key, bare)
		}
	})
}

// sfQuote writes key as an RFC 8941 sf-string.
func sfQuote(key string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
}

func errorIsAny(err error, targets []error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// FuzzHeaderFilter feeds storable header lists written as lines of
// "<flag byte><name>=<value>"; flag bit 0 puts the value in the legacy
// value field instead of raw_value. exclude is a comma list.
func FuzzHeaderFilter(f *testing.F) {
	f.Add("\x00:status=200\n\x00content-type=text/plain\n\x00connection=keep-alive, X-Trace\n"+
		"\x00x-trace=1\n\x00link=<a>\n\x01link=<b>\n\x00set-cookie=a=1\n\x00x-envoy-upstream-service-time=3", "")
	f.Add("\x00Content-Length=3\n\x00DATE=now\n\x00x-internal=1\n\x00=nameless\n\x00te=trailers\n\x00Link=<c>", "X-Internal, ")
	f.Add("\x00connection=,,  \n\x00upgrade=h2c\n\x00idempotent-replayed=true\n\x00a=\xff\x00b", "a")
	f.Fuzz(func(t *testing.T, lines, exclude string) {
		var in []*corev3.HeaderValue
		for _, line := range strings.Split(lines, "\n") {
			if line == "" {
				continue
			}
			name, value, _ := strings.Cut(line[1:], "=")
			h := &corev3.HeaderValue{Key: name, RawValue: []byte(value)}
			if line[0]&1 == 1 {
				h = &corev3.HeaderValue{Key: name, Value: value}
			}
			in = append(in, h)
		}
		for _, h := range in {
			if h.GetKey() != "connection" && strings.EqualFold(h.GetKey(), "connection") {
				// Envoy hands over lower-case names only; storable reads
				// the Connection header by its lower-case name.
				t.Skip("a Connection header name in upper case never comes from Envoy")
			}
		}
		extra := strings.Split(exclude, ",")
		out := newHeaderFilter(extra).storable(in)

		// The whole contract, written independently: everything but the
		// never-replayed headers, lower-cased, in the original order.
		excluded := map[string]bool{}
		for _, name := range extra {
			excluded[strings.ToLower(name)] = true
		}
		for _, h := range in {
			if strings.ToLower(h.GetKey()) == "connection" {
				for _, name := range strings.Split(headerValue(h), ",") {
					excluded[strings.ToLower(strings.TrimSpace(name))] = true
				}
			}
		}
		var want []idem.Header
		for _, h := range in {
			name := strings.ToLower(h.GetKey())
			if name == "" || name[0] == ':' || strings.HasPrefix(name, "x-envoy-") || hopByHop[name] || excluded[name] {
				continue
			}
			want = append(want, idem.Header{Name: name, Value: headerValue(h)})
		}
		if want == nil {
			want = []idem.Header{}
		}
		require.Equal(t, want, out)
	})
}

func FuzzProcess(f *testing.F) {
	for _, seed := range processSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		baseline := runtime.NumGoroutine()
		in := decodeFuzzInput(data)
		store := newFakeStore()
		srv, err := New(in.cfg, Options{Store: store, Logger: discardLogger})
		require.NoError(t, err)
		for i, st := range in.streams {
			runFuzzStream(t, srv, store, st, i)
		}
		requireNoLeftovers(t, srv, baseline)
	})
}

// requireNoLeftovers checks that every stream's goroutines (its watchdog
// above all) ended with it, and the active-stream gauge is back at zero.
func requireNoLeftovers(t *testing.T, srv *Server, baseline int) {
	t.Helper()
	var m dto.Metric
	require.NoError(t, srv.metrics.streams.Write(&m))
	require.Zero(t, m.GetGauge().GetValue(), "idemproxy_active_streams after every stream ended")
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d after, %d before\n%s", runtime.NumGoroutine(), baseline,
				buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

// runFuzzStream plays one stream on a fake stream and checks how it ended
// and the reply to every message it consumed.
func runFuzzStream(t *testing.T, srv *Server, store *fakeStore, st fuzzStreamSpec, n int) {
	t.Helper()
	store.failWith(st.fail)
	ctx := context.Background()
	if st.md != nil {
		ctx = metadata.NewIncomingContext(ctx, st.md)
	}
	fs := &fuzzStream{fakeStream: newFakeStream(ctx), store: store, stealBefore: st.stealBefore}
	defer fs.cancel()
	fs.failSendAt = st.failSendAt
	for _, m := range st.msgs {
		fs.in <- streamItem{req: m.req}
	}
	switch st.end {
	case 0:
		fs.in <- streamItem{err: io.EOF}
	case 1:
		fs.in <- streamItem{err: status.Error(codes.Canceled, "context canceled"), cancelFirst: true}
	default:
		fs.in <- streamItem{err: errFuzzRecv}
	}

	done := make(chan error, 1)
	go func() { done <- srv.Process(fs) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("stream %d: Process did not return", n)
	}
	var out []*extprocv3.ProcessingResponse
	for len(fs.out) > 0 {
		out = append(out, <-fs.out)
	}
	checkStreamEnd(t, st, len(out), err, n)
	for i, resp := range out {
		checkReply(t, srv.cfg, st.msgs[i], resp, fmt.Sprintf("stream %d message %d", n, i))
	}
}

// fuzzStream is a fakeStream that can hand the stream's lock to another
// owner before a given Recv, as if it had expired and been taken.
type fuzzStream struct {
	*fakeStream
	store       *fakeStore
	stealBefore map[int]bool
	recvs       int
}

func (f *fuzzStream) Recv() (*extprocv3.ProcessingRequest, error) {
	if f.stealBefore[f.recvs] {
		f.store.stealAll()
	}
	f.recvs++
	return f.fakeStream.Recv()
}

func checkStreamEnd(t *testing.T, st fuzzStreamSpec, replies int, err error, n int) {
	t.Helper()
	sendFailed := st.failSendAt >= 1 && st.failSendAt <= len(st.msgs)
	switch {
	case err == nil && sendFailed:
		require.Equal(t, st.failSendAt-1, replies, "stream %d: replies before the failed Send", n)
	case err == nil:
		require.Less(t, st.end, byte(2), "stream %d: a receive error must be returned", n)
		require.Equal(t, len(st.msgs), replies, "stream %d: one reply per message", n)
	case errors.Is(err, errFuzzRecv):
		require.Equal(t, byte(2), st.end)
		require.Equal(t, len(st.msgs), replies, "stream %d: one reply per message before the error", n)
	default:
		require.Equal(t, codes.InvalidArgument, status.Code(err), "stream %d: %v", n, err)
		require.Less(t, replies, len(st.msgs), "stream %d", n)
		require.False(t, sendFailed && st.failSendAt <= replies, "stream %d: a failed Send ends the stream first", n)
		bad := st.msgs[replies]
		sawHeaders := false
		for _, m := range st.msgs[:replies] {
			sawHeaders = sawHeaders || m.kind == fkReqHeaders || m.kind == fkNilReqHeaders
		}
		violation := bad.kind == fkNoRequest ||
			(sawHeaders && (bad.kind == fkReqHeaders || bad.kind == fkNilReqHeaders)) ||
			(!bad.eos && (bad.kind == fkReqBody || bad.kind == fkNilReqBody))
		require.True(t, violation, "stream %d: message %d (kind %d) refused: %v", n, replies, bad.kind, err)
	}
}

// checkReply: the reply is of the message's kind, or an immediate response
// to a request-phase message; either one Envoy accepts.
func checkReply(t *testing.T, cfg Config, m fuzzMsg, resp *extprocv3.ProcessingResponse, where string) {
	t.Helper()
	require.NotNil(t, resp, where)
	if ir := resp.GetImmediateResponse(); ir != nil {
		require.Contains(t, []fuzzKind{fkReqHeaders, fkReqBody, fkNilReqHeaders, fkNilReqBody}, m.kind,
			"%s: immediate response outside the request phase", where)
		checkImmediate(t, ir, where)
		return
	}
	var common *extprocv3.CommonResponse
	switch m.kind {
	case fkReqHeaders, fkNilReqHeaders:
		require.NotNil(t, resp.GetRequestHeaders(), "%s: got %T", where, resp.GetResponse())
		common = resp.GetRequestHeaders().GetResponse()
	case fkReqBody, fkNilReqBody:
		require.NotNil(t, resp.GetRequestBody(), "%s: got %T", where, resp.GetResponse())
		common = resp.GetRequestBody().GetResponse()
	case fkRespHeaders, fkNilRespHeaders:
		require.NotNil(t, resp.GetResponseHeaders(), "%s: got %T", where, resp.GetResponse())
		common = resp.GetResponseHeaders().GetResponse()
	case fkRespBody, fkNilRespBody:
		require.NotNil(t, resp.GetResponseBody(), "%s: got %T", where, resp.GetResponse())
		common = resp.GetResponseBody().GetResponse()
	case fkReqTrailers:
		require.NotNil(t, resp.GetRequestTrailers(), where)
	case fkRespTrailers:
		require.NotNil(t, resp.GetResponseTrailers(), where)
	default:
		t.Fatalf("%s: kind %d got a reply", where, m.kind)
	}
	require.Equal(t, extprocv3.CommonResponse_CONTINUE, common.GetStatus(), where)
	require.Nil(t, common.GetBodyMutation(), "%s: bodies pass untouched", where)
	for _, h := range common.GetHeaderMutation().GetSetHeaders() {
		require.True(t, validHeaderName(h.GetHeader().GetKey()), "%s: set header %q", where, h.GetHeader().GetKey())
	}
	for _, h := range common.GetHeaderMutation().GetRemoveHeaders() {
		require.True(t, validHeaderName(h), "%s: remove header %q", where, h)
		// Removing the client's fence without setting ours means no grant:
		// only fail-open, or a method outside --methods (passed through,
		// with the rest of the request skipped), lets a request go that way.
		passthrough := resp.GetModeOverride().GetResponseHeaderMode() == filterv3.ProcessingMode_SKIP && len(cfg.Methods) > 0
		require.True(t, cfg.FailOpen || passthrough, "%s: a keyed request let through without a lock", where)
	}
}

// checkImmediate: a final status, header names Envoy takes, and for our
// own problems a well-formed RFC 9457 body.
func checkImmediate(t *testing.T, ir *extprocv3.ImmediateResponse, where string) {
	t.Helper()
	// Never a 1xx: a 101 was once stored and replayed (Envoy made it 200).
	code := int(ir.GetStatus().GetCode())
	require.True(t, code >= 200 && code <= 599, "%s: immediate status %d", where, code)
	problemJSON := false
	for _, o := range ir.GetHeaders().GetSetHeaders() {
		name := o.GetHeader().GetKey()
		require.NotEmpty(t, name, where)
		require.NotEqual(t, byte(':'), name[0], "%s: pseudo-header %q", where, name)
		require.False(t, strings.ContainsFunc(name, func(r rune) bool { return r >= 'A' && r <= 'Z' }),
			"%s: upper-case header name %q", where, name)
		require.Empty(t, o.GetHeader().GetValue(), "%s: %q must travel in raw_value", where, name)
		problemJSON = problemJSON || (name == "content-type" && string(o.GetHeader().GetRawValue()) == problemContentType)
	}
	if problemJSON && strings.HasPrefix(ir.GetDetails(), "idemproxy_") && ir.GetDetails() != "idemproxy_replayed" {
		var p problem
		require.NoError(t, json.Unmarshal(ir.GetBody(), &p), where)
		require.True(t, strings.HasPrefix(p.Type, problemBase), where)
		require.Equal(t, code, p.Status, where)
	}
}

var discardLogger = slog.New(slog.DiscardHandler)
