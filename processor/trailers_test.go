package processor

import (
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
)

func respTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{
		ResponseTrailers: &extprocv3.HttpTrailers{Trailers: headerMap("x-checksum", "abc")}}}
}

func TestServer_Process_trailers(t *testing.T) {
	t.Run("a buffered request body followed by trailers is whole: the key is decided on it", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		headers := keyed("POST", "k", false)
		headers.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_BUFFERED}
		out, err := run(t, srv, endEOF, headers, reqBody(`{"amount":1}`, false))
		require.NoError(t, err)
		require.Len(t, out, 2)
		requireContinue(t, out[1])
		acq := store.callsOf("acquire")
		require.Len(t, acq, 1)
		require.Equal(t, fingerprint("POST", "/charge?x=1", []byte(`{"amount":1}`)), acq[0].fp, "trailers are not part of the fingerprint")
	})
	t.Run("without word that the body is buffered, a body without its end is refused", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		_, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("partial", false))
		require.ErrorContains(t, err, "request_body_mode BUFFERED")
		require.Empty(t, store.callsOf("acquire"))
	})
	t.Run("a response that ends with trailers is completed without a replayable body", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, nil)
		out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "200"),
			respBody("data", false), respTrailers())
		require.NoError(t, err)
		require.Len(t, out, 4)
		require.NotNil(t, out[3].GetResponseTrailers(), "the trailers go on to the client unchanged")
		e, _ := store.entry(keyOf("k"))
		require.NotNil(t, e.rec)
		require.True(t, e.rec.Trailers)
		require.False(t, e.rec.BodyStored)
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStoredTrailers))

		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		p, _ := requireProblem(t, retry[0], 409, "response-not-stored")
		require.Contains(t, p.Detail, "status 200")
		require.Contains(t, p.Detail, "trailers")
	})
}
