package processor

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// withCodeDetails adds the response.code_details attribute as Envoy sends it.
func withCodeDetails(req *extprocv3.ProcessingRequest, details string) *extprocv3.ProcessingRequest {
	req.Attributes = map[string]*structpb.Struct{extProcAttrs: {Fields: map[string]*structpb.Value{
		codeDetailsAttr: structpb.NewStringValue(details)}}}
	return req
}

func TestOriginOf(t *testing.T) {
	tests := []struct {
		details string
		want    responseOrigin
	}{
		{"", originUpstream},
		{"via_upstream", originUpstream},
		{"upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}", originNeverSent},
		{"upstream_reset_before_response_started{local_connection_failure}", originNeverSent},
		{"upstream_reset_before_response_started{overflow}", originNeverSent},
		{"no_healthy_upstream", originNeverSent},
		{"cluster_not_found", originNeverSent},
		{"response_timeout", originLocalUnknown},
		{"upstream_reset_before_response_started{connection_termination}", originLocalUnknown},
		{"upstream_reset_before_response_started{remote_reset}", originLocalUnknown},
	}
	for _, tc := range tests {
		t.Run("details "+tc.details, func(t *testing.T) {
			got, withDetails := originOf(withCodeDetails(respHeaders(false, ":status", "503"), tc.details))
			require.Equal(t, tc.want, got)
			require.True(t, withDetails)
		})
	}
}

func TestServer_Process_localReplies(t *testing.T) {
	t.Run("a connect failure releases the key: the request never left Envoy", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		resp := withCodeDetails(respHeaders(false, ":status", "503"),
			"upstream_reset_before_response_started{remote_connection_failure}")
		out, err := run(t, srv, endCanceled, keyed("POST", "k", true), resp)
		require.NoError(t, err)
		require.Len(t, out, 2)
		require.Equal(t, "NONE", out[1].GetModeOverride().GetResponseBodyMode().String())
		require.Equal(t, []string{"acquire", "release"}, store.ops())
	})
	t.Run("a timeout holds the key as unknown: the upstream may have run the request", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, nil)
		resp := withCodeDetails(respHeaders(false, ":status", "504"), "response_timeout")
		out, err := run(t, srv, endCanceled, keyed("POST", "k", true), resp)
		require.NoError(t, err)
		require.Len(t, out, 2)
		require.Equal(t, "NONE", out[1].GetModeOverride().GetResponseBodyMode().String())
		require.Equal(t, []string{"acquire", "abandon"}, store.ops(), "held, neither released nor stored")
		e, held := store.entry(keyOf("k"))
		require.True(t, held)
		require.True(t, e.unknown)
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultUnknownOutcome))
	})
	t.Run("an upstream 200 is stored as usual", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		_, err := run(t, srv, endCanceled, keyed("POST", "k", true),
			withCodeDetails(respHeaders(true, ":status", "200"), "via_upstream"))
		require.NoError(t, err)
		require.Equal(t, []string{"acquire", "complete"}, store.ops())
	})
}
