package envoy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// localReplyFlag is the runtime flag envoy.yaml sets for Envoy 1.36
// (docs/envoy-and-mesh.md, "Supported Envoy versions").
const localReplyFlag = "envoy.reloadable_features.skip_ext_proc_on_local_reply: "

// TestEnvoyVersions_LocalReplyFlag pins the row of the versions table that
// the shipped config depends on, on whichever Envoy runs (ENVOY_VERSION):
// without the runtime flag (left at its default, true), Envoy 1.36 sends its
// reply to a refused connection past ext_proc, and idemproxy, which then
// sees the stream end with no response, holds the key; 1.37 and later have
// no such flag and release the key. TestEndToEnd_BackendUnreachable is the
// same scenario with the shipped config: released on every version.
func TestEnvoyVersions_LocalReplyFlag(t *testing.T) {
	t.Parallel()
	version, err := testenv.SelectedEnvoyVersion()
	require.NoError(t, err)
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{{localReplyFlag + "false", localReplyFlag + "true"}}})
	s.backendProc.Kill() // SIGKILL: the port refuses connections at once

	key := newKey(t)
	r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusServiceUnavailable, r.status)
	// idemproxy settles the key when the stream ends, which may be just
	// after the client has its answer.
	released := func() float64 { return s.metric(t, `idemproxy_responses_total{result="released_status"}`) }
	unknown := func() float64 { return s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`) }
	testenv.WaitFor(t, 10*time.Second, "idemproxy settles the key", func() bool { return released()+unknown() == 1 })
	again := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
	if strings.HasPrefix(version, "1.36.") {
		require.Equal(t, 1.0, unknown(), "1.36 without the flag: no response reached idemproxy")
		require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
		require.Equal(t, problem+"outcome-unknown", again.problemType())
		return
	}
	testenv.WaitFor(t, 10*time.Second, "idemproxy releases the key again", func() bool { return released() == 2 })
	require.Zero(t, unknown(), "Envoy %s has no such flag", version)
	require.Equal(t, http.StatusServiceUnavailable, again.status, "the retry ran (and was refused again)")
}
