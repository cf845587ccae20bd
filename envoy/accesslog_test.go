package envoy

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// accessLine is one line of the shipped envoy.yaml's JSON access log.
type accessLine struct {
	Method  string `json:"method"`
	Path    string `json:"path"`
	Status  int    `json:"status"`
	Details string `json:"details"`
	Outcome any    `json:"idemproxy_outcome"`
	Fence   any    `json:"idemproxy_fence"`
	Result  any    `json:"idemproxy_result"`
}

// accessLog returns the access-log lines of s's Envoy for path, in order.
func (s *stack) accessLog(path string) []accessLine {
	var out []accessLine
	for _, l := range s.envoy.Lines() {
		var a accessLine
		if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &a) == nil && a.Path == path {
			out = append(out, a)
		}
	}
	return out
}

// TestAccessLog_saysWhatIdemproxyDecided runs the shipped envoy.yaml: its
// JSON access log carries the decision idemproxy returned as dynamic
// metadata.
func TestAccessLog_saysWhatIdemproxyDecided(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	// The path tells this test's lines apart; the key is never logged.
	path := "/charge?order=" + newKey(t)
	key := newKey(t)
	require.Equal(t, http.StatusOK, s.do(t, "POST", path, `{"amount":5000}`, "Idempotency-Key", key).status)
	require.True(t, s.do(t, "POST", path, `{"amount":5000}`, "Idempotency-Key", key).replayed())
	require.Equal(t, http.StatusUnprocessableEntity, s.do(t, "POST", path, `{"amount":1}`, "Idempotency-Key", key).status)
	require.Equal(t, http.StatusOK, s.do(t, "POST", path, `{"amount":5000}`).status)

	// Envoy flushes its log every second.
	var lines []accessLine
	testenv.WaitFor(t, 10*time.Second, "four access-log lines", func() bool {
		lines = s.accessLog(path)
		return len(lines) == 4
	})
	for _, l := range s.envoy.Lines() {
		require.NotContains(t, l, key, "the key is never logged")
	}
	first, replay, mismatch, keyless := lines[0], lines[1], lines[2], lines[3]
	require.Equal(t, accessLine{Method: "POST", Path: path, Status: 200, Details: "via_upstream",
		Outcome: "acquired", Fence: 1.0, Result: "stored"}, first)
	require.Equal(t, accessLine{Method: "POST", Path: path, Status: 200, Details: "idemproxy_replayed",
		Outcome: "replayed"}, replay, "a replay says replayed")
	require.Equal(t, "fingerprint_mismatch", mismatch.Outcome)
	require.Equal(t, 422, mismatch.Status)
	require.Nil(t, keyless.Outcome, "a request without a key never reached idemproxy")
	t.Logf("the replay's access-log line: %s", rawLine(s, path, "idemproxy_replayed"))
	t.Logf("the first run's access-log line: %s", rawLine(s, path, "via_upstream"))
}

func rawLine(s *stack, path, details string) string {
	for _, l := range s.envoy.Lines() {
		if strings.Contains(l, `"path":"`+path+`"`) && strings.Contains(l, `"details":"`+details+`"`) {
			return l
		}
	}
	return ""
}
