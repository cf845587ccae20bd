package processor

import (
	"bytes"
	"errors"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// The FuzzProcess input. Past its end the reader yields zeros, so every
// byte string decodes, always to the same streams:
//
//	input   = config stream*        at most 4 streams, run one after another on one server and store
//	config  = byte                  bit 0 fail-open, 1 on-unknown=rerun-after-ttl, 2 stored-body cap of 8 bytes,
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
	{"abandon": errFuzzStore}, {"renew": errFuzzStore}, {"complete": idem.ErrLeaseLost},
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
	cfg.FailOpen = c&1 != 0
	if c&2 != 0 {
		cfg.OnUnknown = OnUnknownRerunAfterTTL
	}
	// Failing store operations are retried until this passes; the fuzzer
	// needs the retries, not the wait.
	cfg.FinalizeTimeout, cfg.FinalizeUntilLease = 20*time.Millisecond, false
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
