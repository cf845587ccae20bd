package processor

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Builders for the replies Envoy expects: exactly one per message, of the
// matching kind.

func continueRequestHeaders() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{}}}
}

func continueRequestBody() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
		RequestBody: &extprocv3.BodyResponse{}}}
}

func continueResponseHeaders() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{}}}
}

// continueResponseBody forwards the chunk unchanged: an empty BodyResponse
// is Envoy's "no mutation".
func continueResponseBody() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
		ResponseBody: &extprocv3.BodyResponse{}}}
}

func continueRequestTrailers() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
		RequestTrailers: &extprocv3.TrailersResponse{}}}
}

func continueResponseTrailers() *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
		ResponseTrailers: &extprocv3.TrailersResponse{}}}
}

// skipRest is the mode override that stops all further processing of this
// request. Envoy copies body modes literally, so all six fields are set.
func skipRest() *filterv3.ProcessingMode {
	return &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SKIP,
		RequestBodyMode:     filterv3.ProcessingMode_NONE,
		ResponseBodyMode:    filterv3.ProcessingMode_NONE,
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SKIP,
	}
}

// withResponseTrailers keeps the body modes Envoy reported (pc) and asks
// for the response trailers. A gRPC response always ends with trailers,
// and without them its end never reaches us: a config that skips them
// (Envoy Gateway 1.9 cannot send them with a streamed body) would leave
// every keyed call's retry a 409 response-not-stored. Envoy applies an
// override only with allow_mode_override (the shipped configs, Envoy
// Gateway's allowModeOverride); without it nothing changes.
func withResponseTrailers(pc *extprocv3.ProtocolConfiguration) *filterv3.ProcessingMode {
	return &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
		RequestBodyMode:     pc.GetRequestBodyMode(),
		ResponseBodyMode:    pc.GetResponseBodyMode(),
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SEND,
	}
}

// skipResponseBody keeps the configured request modes but stops the
// response body stream (a response we will not store).
func skipResponseBody() *filterv3.ProcessingMode {
	return &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
		RequestBodyMode:     filterv3.ProcessingMode_BUFFERED,
		ResponseBodyMode:    filterv3.ProcessingMode_NONE,
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SKIP,
	}
}

// immediate answers the client directly; Envoy sends nothing upstream (or
// drops the upstream response, when answering response headers).
func immediate(status int, headers []idem.Header, body []byte, details string) *extprocv3.ProcessingResponse {
	set := make([]*corev3.HeaderValueOption, 0, len(headers))
	seen := make(map[string]bool, len(headers))
	for _, h := range headers {
		set = append(set, &corev3.HeaderValueOption{
			// Current Envoy reads raw_value only; setting value too is an error.
			Header: &corev3.HeaderValue{Key: h.Name, RawValue: []byte(h.Value)},
			// Envoy's ext_proc ignores append_action and reads only the
			// deprecated append flag (checked against Envoy 1.40): the first
			// line of a name replaces whatever Envoy put there, the next
			// ones are added, so repeated headers survive in order.
			Append: wrapperspb.Bool(seen[h.Name]),
		})
		seen[h.Name] = true
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			Headers: &extprocv3.HeaderMutation{SetHeaders: set},
			Body:    body,
			Details: details,
		}}}
}

// fence adds the grant's fencing token to the request going upstream, or,
// with fence 0 (no grant: fail-open), removes any the client sent, so a
// backend never trusts a fence that idemproxy did not issue.
func (s *Server) fence(resp *extprocv3.ProcessingResponse, fence int64) *extprocv3.ProcessingResponse {
	if s.cfg.FenceHeader == "" {
		return resp
	}
	mut := &extprocv3.HeaderMutation{RemoveHeaders: []string{s.cfg.FenceHeader}}
	if fence > 0 {
		mut = &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: s.cfg.FenceHeader, RawValue: strconv.AppendInt(nil, fence, 10)},
		}}}
	}
	return withCommon(resp, &extprocv3.CommonResponse{HeaderMutation: mut})
}

// withCommon sets common on resp, the CONTINUE of a request phase
// (headers or body); other replies carry none.
func withCommon(resp *extprocv3.ProcessingResponse, common *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		r.RequestHeaders.Response = common
	case *extprocv3.ProcessingResponse_RequestBody:
		r.RequestBody.Response = common
	}
	return resp
}
