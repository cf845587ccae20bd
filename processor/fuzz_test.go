package processor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
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
	"google.golang.org/protobuf/types/known/structpb"
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
		var want []Header
		for _, h := range in {
			name := strings.ToLower(h.GetKey())
			if name == "" || name[0] == ':' || strings.HasPrefix(name, "x-envoy-") || hopByHop[name] || excluded[name] {
				continue
			}
			want = append(want, Header{Name: name, Value: headerValue(h)})
		}
		if want == nil {
			want = []Header{}
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
	store.mu.Lock()
	store.fail = st.fail
	store.mu.Unlock()
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
		f.store.mu.Lock()
		for _, e := range f.store.entries {
			if e.rec == nil && !e.unknown {
				e.token = "thief"
			}
		}
		f.store.mu.Unlock()
	}
	f.recvs++
	return f.fakeStream.Recv()
}

// The FuzzProcess input. Past its end the reader yields zeros, so every
// byte string decodes, always to the same streams:
//
//	input   = config stream*        at most 4 streams, run one after another on one server and store
//	config  = byte                  bit 0 fail-open, 1 on-unknown=hold, 2 stored-body cap of 8 bytes,
//	                                3 methods POST only, 4 scope header x-tenant-id, 5 no fence header
//	stream  = end env count msg*    count%25 messages
//	end     = byte                  %4: half-close, reset, receive error, half-close;
//	                                /4%8: the Send that fails (0: none)
//	env     = byte                  %4: route metadata (none, 1s TTL with 5ms heartbeat, invalid, key required);
//	                                /4%8: failing store operations (fuzzStoreFailures)
//	msg     = kind flags [headers | body]     kind%12: fuzzKind; flags bit 0: end_of_stream
//	headers = count (name value)*   count%16; name: a fuzzNames index, or (b%8+1) raw bytes;
//	                                value: bit 7 uses the legacy value field, the other bits a
//	                                fuzzValues index, or a length byte and that many raw bytes
//	body    = len                   bit 7: (len&0x7f) KiB of filler, else len raw bytes
type fuzzKind = byte

const (
	fkReqHeaders     fuzzKind = iota // flags bits 1-3: protocol_config variant
	fkReqBody                        //
	fkRespHeaders                    // flags bits 1-3: response.code_details variant
	fkRespBody                       //
	fkReqTrailers                    //
	fkRespTrailers                   //
	fkNoRequest                      // a message with no oneof set
	fkNilReqHeaders                  // the oneof set, its message nil
	fkNilReqBody                     //
	fkNilRespHeaders                 //
	fkNilRespBody                    //
	fkSteal                          // no message: the lock is taken by another owner before the next Recv
	fkKinds
)

var (
	fuzzNames = []string{":method", ":path", ":authority", ":scheme", ":status", "idempotency-key",
		"x-idempotency-key", "Idempotency-Key", "x-tenant-id", "connection", "keep-alive", "content-length",
		"content-type", "set-cookie", "x-envoy-upstream-service-time", "idempotency-fence",
		"idempotent-replayed", "date", "x-trace", "link", "", "transfer-encoding"}
	fuzzValues = []string{"POST", "GET", "PATCH", "/charge", "/charge?x=1", "api.example.com", "k1", `"k1"`,
		"k2", `"k2"`, "200", "201", "204", "500", "409", "100", "101", "599", "600", "abc", "",
		"x-trace, close", "acme", "application/json", "true", "a\tb", "a\x00b", `"k1`, "\xff\xfe",
		strings.Repeat("k", 256), strings.Repeat("v", 10<<10), strings.Repeat("h", 64<<10)}
	fuzzCodeDetails = []string{"via_upstream", "upstream_reset_before_response_started{remote_connection_failure}",
		"response_timeout", "", "no_healthy_upstream"}
	errFuzzStore = errors.New("fuzz: redis: i/o timeout")
	errFuzzRecv  = status.Error(codes.Unavailable, "fuzz: transport is closing")
)

// fuzzStoreFailures are the store operations that fail, per env variant.
var fuzzStoreFailures = []map[string]error{
	{}, {"acquire": errFuzzStore}, {"complete": errFuzzStore}, {"release": errFuzzStore},
	{"abandon": errFuzzStore}, {"renew": errFuzzStore}, {"complete": ErrLeaseLost},
	{"acquire": errFuzzStore, "complete": errFuzzStore, "release": errFuzzStore, "abandon": errFuzzStore, "renew": errFuzzStore},
}

type fuzzInput struct {
	cfg     Config
	streams []fuzzStreamSpec
}

type fuzzStreamSpec struct {
	end         byte // 0 half-close, 1 reset, 2 receive error
	failSendAt  int
	md          metadata.MD
	fail        map[string]error
	msgs        []fuzzMsg
	stealBefore map[int]bool // Recv index -> steal the lock first
}

type fuzzMsg struct {
	kind fuzzKind
	eos  bool
	req  *extprocv3.ProcessingRequest
}

type fuzzReader struct{ b []byte }

func (r *fuzzReader) next() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzReader) take(n int) []byte {
	n = min(n, len(r.b))
	out := bytes.Clone(r.b[:n])
	r.b = r.b[n:]
	return out
}

func decodeFuzzInput(data []byte) fuzzInput {
	r := &fuzzReader{b: data}
	c := r.next()
	cfg := DefaultConfig()
	cfg.FailOpen, cfg.HoldUnknown = c&1 != 0, c&2 != 0
	if c&4 != 0 {
		cfg.MaxStoredBody = 8
	}
	if c&8 != 0 {
		cfg.Methods = []string{"POST"}
	}
	if c&16 != 0 {
		cfg.ScopeHeaders = []string{"x-tenant-id"}
	}
	if c&32 != 0 {
		cfg.FenceHeader = ""
	}
	in := fuzzInput{cfg: cfg}
	for len(r.b) > 0 && len(in.streams) < 4 {
		in.streams = append(in.streams, decodeFuzzStream(r))
	}
	return in
}

func decodeFuzzStream(r *fuzzReader) fuzzStreamSpec {
	end, env := r.next(), r.next()
	st := fuzzStreamSpec{end: end % 4 % 3, failSendAt: int(end / 4 % 8), fail: fuzzStoreFailures[env/4%8],
		stealBefore: map[int]bool{}}
	switch env % 4 {
	case 1:
		st.md = metadata.Pairs(mdLockTTL, "1s", mdHeartbeat, "5ms")
	case 2:
		st.md = metadata.Pairs(mdLockTTL, "soon")
	case 3:
		st.md = metadata.Pairs(mdKeyRequired, "true", mdRetention, "1h")
	}
	for n := int(r.next() % 25); n > 0; n-- {
		kind, flags := r.next()%fkKinds, r.next()
		// Only messages with a body or headers carry end_of_stream.
		m := fuzzMsg{kind: kind, eos: flags&1 == 1 && kind <= fkRespBody}
		switch kind {
		case fkReqHeaders:
			m.req = &extprocv3.ProcessingRequest{
				Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
					Headers: decodeFuzzHeaders(r), EndOfStream: m.eos}},
				ProtocolConfig: fuzzProtocolConfig(flags >> 1 % 8)}
		case fkReqBody:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
				RequestBody: &extprocv3.HttpBody{Body: decodeFuzzBody(r), EndOfStream: m.eos}}}
		case fkRespHeaders:
			m.req = &extprocv3.ProcessingRequest{
				Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
					Headers: decodeFuzzHeaders(r), EndOfStream: m.eos}},
				Attributes: fuzzAttributes(flags >> 1 % 8)}
		case fkRespBody:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
				ResponseBody: &extprocv3.HttpBody{Body: decodeFuzzBody(r), EndOfStream: m.eos}}}
		case fkReqTrailers:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{
				RequestTrailers: &extprocv3.HttpTrailers{}}}
		case fkRespTrailers:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{}}
		case fkNoRequest:
			m.req = &extprocv3.ProcessingRequest{}
		case fkNilReqHeaders:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{}}
		case fkNilReqBody:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{}}
		case fkNilRespHeaders:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{}}
		case fkNilRespBody:
			m.req = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{}}
		case fkSteal:
			st.stealBefore[len(st.msgs)] = true
			continue
		}
		st.msgs = append(st.msgs, m)
	}
	return st
}

func decodeFuzzHeaders(r *fuzzReader) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for n := r.next() % 16; n > 0; n-- {
		name := ""
		if b := r.next(); int(b) < len(fuzzNames) {
			name = fuzzNames[b]
		} else {
			name = string(r.take(int(b%8) + 1))
		}
		v := r.next()
		var value []byte
		if i := int(v & 0x7f); i < len(fuzzValues) {
			value = []byte(fuzzValues[i])
		} else {
			value = r.take(int(r.next()))
		}
		h := &corev3.HeaderValue{Key: name, RawValue: value}
		if v&0x80 != 0 {
			h = &corev3.HeaderValue{Key: name, Value: string(value)}
		}
		m.Headers = append(m.Headers, h)
	}
	return m
}

func decodeFuzzBody(r *fuzzReader) []byte {
	n := r.next()
	if n&0x80 != 0 {
		return bytes.Repeat([]byte{'b'}, int(n&0x7f)<<10)
	}
	return r.take(int(n))
}

// fuzzProtocolConfig: none, then every body send mode, then an unknown one.
func fuzzProtocolConfig(v byte) *extprocv3.ProtocolConfiguration {
	if v == 0 {
		return nil
	}
	mode := filterv3.ProcessingMode_BodySendMode(v - 1)
	if v == 7 {
		mode = 99
	}
	return &extprocv3.ProtocolConfiguration{RequestBodyMode: mode, ResponseBodyMode: mode}
}

// fuzzAttributes: none, each code_details of fuzzCodeDetails, then an
// attribute of the wrong type and an empty attribute struct.
func fuzzAttributes(v byte) map[string]*structpb.Struct {
	var fields map[string]*structpb.Value
	switch {
	case v == 0:
		return nil
	case int(v) <= len(fuzzCodeDetails):
		fields = map[string]*structpb.Value{codeDetailsAttr: structpb.NewStringValue(fuzzCodeDetails[v-1])}
	case v == 6:
		fields = map[string]*structpb.Value{codeDetailsAttr: structpb.NewNumberValue(504)}
	default:
		return map[string]*structpb.Struct{extProcAttrs: nil}
	}
	return map[string]*structpb.Struct{extProcAttrs: {Fields: fields}}
}

// checkStreamEnd: every message before the end got its reply, or the
// stream ended with InvalidArgument at a message Envoy never sends that
// way, or a Send failed (the stream is gone), or Recv failed.
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
		// only fail-open lets a keyed request upstream that way.
		require.True(t, cfg.FailOpen, "%s: a keyed request let through without a lock", where)
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

// Seed builders, in the format decodeFuzzInput reads.

func seedInput(config byte, streams ...[]byte) []byte {
	return append([]byte{config}, bytes.Join(streams, nil)...)
}

// seedStream: end and env as in the format; msgs from the builders below.
func seedStream(end, env byte, msgs ...[]byte) []byte {
	return append([]byte{end, env, byte(len(msgs))}, bytes.Join(msgs, nil)...)
}

// seedHeaders takes name, value pairs from fuzzNames and fuzzValues.
func seedHeaders(kind fuzzKind, flags byte, kv ...string) []byte {
	out := []byte{kind, flags, byte(len(kv) / 2)}
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, byte(slices.Index(fuzzNames, kv[i])), byte(slices.Index(fuzzValues, kv[i+1])))
	}
	if bytes.IndexByte(out, 0xff) >= 0 {
		panic(fmt.Sprintf("seed header not in the tables: %q", kv))
	}
	return out
}

func seedBody(kind fuzzKind, eos bool, body string) []byte {
	flags := byte(0)
	if eos {
		flags = 1
	}
	return append([]byte{kind, flags, byte(len(body))}, body...)
}

func seedKeyed(eos bool, key string) []byte {
	flags := byte(3 << 1) // protocol_config: BUFFERED
	if eos {
		flags |= 1
	}
	return seedHeaders(fkReqHeaders, flags, ":method", "POST", ":path", "/charge", ":authority", "api.example.com",
		"idempotency-key", key)
}

func processSeeds() [][]byte {
	post := [][]byte{seedKeyed(false, "k1"), seedBody(fkReqBody, true, `{"amount":5000}`)}
	ok := [][]byte{seedHeaders(fkRespHeaders, 1<<1, ":status", "201", "content-type", "application/json",
		"set-cookie", "abc", "link", "abc", "link", "true"), seedBody(fkRespBody, false, `{"id":`), seedBody(fkRespBody, true, `42}`)}
	flow := append(append([][]byte{}, post...), ok...)
	return [][]byte{
		// A keyed POST with a body, stored, then replayed, then a mismatch.
		seedInput(0, seedStream(1, 0, flow...), seedStream(1, 0, post...),
			seedStream(0, 0, seedKeyed(false, "k1"), seedBody(fkReqBody, true, "other"))),
		// Without a key: passthrough; with a route that requires one: 400.
		seedInput(0, seedStream(0, 0, seedHeaders(fkReqHeaders, 0, ":method", "POST", ":path", "/charge")),
			seedStream(0, 3, seedHeaders(fkReqHeaders, 0, ":method", "POST", ":path", "/charge"))),
		// A 5xx releases the key; the retry runs and is stored.
		seedInput(0, seedStream(0, 0, seedKeyed(true, "k2"), seedHeaders(fkRespHeaders, 1, ":status", "500")),
			seedStream(1, 0, seedKeyed(true, `"k2"`), seedHeaders(fkRespHeaders, 1, ":status", "204"))),
		// The stream ends after the request went upstream, with hold: the retry gets 409.
		seedInput(2, seedStream(1, 0, seedKeyed(true, "k1")), seedStream(0, 0, seedKeyed(true, "k1"))),
		// Invalid and conflicting keys.
		seedInput(0, seedStream(0, 0, seedHeaders(fkReqHeaders, 0, ":method", "POST", "idempotency-key", "a\tb")),
			seedStream(0, 0, seedHeaders(fkReqHeaders, 1, "idempotency-key", "k1", "x-idempotency-key", "k2"))),
		// Protocol violations: headers twice, a streamed body, no oneof.
		seedInput(0, seedStream(0, 0, seedKeyed(false, "k1"), seedKeyed(false, "k1")),
			seedStream(0, 0, seedKeyed(false, "k1"), seedBody(fkReqBody, false, "part")),
			seedStream(0, 0, []byte{fkNoRequest, 0})),
		// Redis down: 503, then fail-open.
		seedInput(0, seedStream(0, 1<<2, seedKeyed(true, "k1"))),
		seedInput(1, seedStream(0, 1<<2, post...)),
		// An Envoy local reply before the request left; a timeout after.
		seedInput(0, seedStream(0, 0, seedKeyed(true, "k1"), seedHeaders(fkRespHeaders, 2<<1, ":status", "500")),
			seedStream(0, 0, seedKeyed(true, "k2"), seedHeaders(fkRespHeaders, 3<<1, ":status", "500"))),
		// The lease is taken by another owner mid-response; a short route TTL.
		seedInput(0, seedStream(0, 1, append(append([][]byte{}, post...), ok[0], []byte{fkSteal, 0}, ok[1], ok[2])...)),
		// A response body over the 8-byte cap, then its retry.
		seedInput(4, seedStream(0, 0, flow...), seedStream(0, 0, post...)),
		// A failing Send, a receive error, an invalid route policy.
		seedInput(0, seedStream(1<<2, 0, post...), seedStream(2, 0, post...), seedStream(0, 2, post...)),
		// The response before the request, trailers, nil messages.
		seedInput(0, seedStream(0, 0, ok[0], ok[2], []byte{fkReqTrailers, 0}, []byte{fkRespTrailers, 0},
			[]byte{fkNilReqHeaders, 0}, []byte{fkNilReqBody, 0}, []byte{fkNilRespHeaders, 0}, []byte{fkNilRespBody, 0})),
		// A 101 response: released, never stored, so never replayed.
		seedInput(0, seedStream(0, 0, seedKeyed(true, "k1"), seedHeaders(fkRespHeaders, 1, ":status", "101")),
			seedStream(0, 0, seedKeyed(true, "k1"))),
		// A keyed body Envoy does not buffer, and huge headers.
		seedInput(0, seedStream(0, 0, seedHeaders(fkReqHeaders, 1<<1, ":method", "POST", "idempotency-key", "k1")),
			seedStream(0, 0, seedHeaders(fkReqHeaders, 1, ":method", "POST", "idempotency-key",
				strings.Repeat("k", 256), "x-trace", strings.Repeat("h", 64<<10)))),
	}
}
