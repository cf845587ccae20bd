package envoy

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestEndToEnd_BodyNotBuffered: an Envoy that does not buffer request bodies
// gives idemproxy no fingerprint. Envoy 1.40 announces its body mode in the
// stream's protocol_config, and idemproxy refuses instead of letting the
// request through unguarded.
func TestEndToEnd_BodyNotBuffered(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		envoyEdits: [][2]string{{"request_body_mode: BUFFERED", "request_body_mode: NONE"}},
	})
	key := newKey(t)
	r := s.do(t, "POST", "/charge", `{"amount":5000}`, "Idempotency-Key", key)
	require.Equal(t, http.StatusInternalServerError, r.status, "%s", r.body)
	require.Equal(t, problem+"misconfigured", r.problemType())
	require.Zero(t, s.executions(t, key))
	require.Equal(t, 1.0, s.metric(t, configProblem("request_body_not_buffered")))

	// A request without a body needs no buffering and still works.
	r = s.do(t, "GET", "/charge", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusOK, r.status)
	require.True(t, s.do(t, "GET", "/charge", "", "Idempotency-Key", key).replayed())
}
