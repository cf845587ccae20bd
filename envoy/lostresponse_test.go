package envoy

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/toxi"
)

// loseResponse is the toxic of the story: on the downstream stream (Envoy
// back to the client) the timeout toxic with timeout 0 drops every byte and
// closes nothing. The request reaches the backend, and Envoy writes its whole
// response, so idemproxy stores it; only the client never hears back.
// reset_peer and limit_data would instead close the connection at the first
// response byte, racing Envoy's last body chunk (which idemproxy holds back
// until the response is stored) and turning the story into an unknown outcome.
var loseResponse = map[string]any{"timeout": 0}

// TestEndToEnd_LostResponse is the double charge of the README, through real
// Toxiproxy in front of real Envoy: the backend charges, the response is lost
// on its way to the client, the client retries with the same key and gets
// the first charge back; the backend ran once.
func TestEndToEnd_LostResponse(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	tp := toxi.Start(t, binDir)
	envoyAddr := strings.TrimPrefix(s.url, "http://")

	t.Run("the retry after a lost response replays the charge", func(t *testing.T) {
		t.Parallel()
		front := testenv.Addr(t)
		tp.CreateProxy(t, "envoy_front", front, envoyAddr)
		charge := func(timeout time.Duration, key string) (*http.Response, []byte, error) {
			return send("http://"+front+"/charge", key, timeout)
		}

		key := newKey(t)
		_, _, err := charge(10*time.Second, "")
		require.NoError(t, err, "Toxiproxy passes traffic before the toxic")

		tp.AddToxic(t, "envoy_front", "lose_response", "timeout", "downstream", loseResponse)
		start := time.Now()
		resp, _, err := charge(1500*time.Millisecond, key)
		require.Error(t, err, "the response must be lost, got %v", resp)
		t.Logf("lost: the client gave up after %v: %v", time.Since(start).Round(time.Millisecond), err)
		testenv.WaitFor(t, 5*time.Second, "the charge at the backend", func() bool { return s.executions(t, key) == 1 })

		tp.RemoveToxic(t, "envoy_front", "lose_response")
		resp, body, err := charge(10*time.Second, key)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
		id := chargeID(t, body)

		_, again, err := charge(10*time.Second, key)
		require.NoError(t, err)
		require.Equal(t, id, chargeID(t, again), "every retry gets the one charge")
		require.Equal(t, 1, s.executions(t, key), "the card was charged once")
		t.Logf("retry: 200 replayed, charge %s; backend executions %d", id, s.executions(t, key))
	})

	t.Run("deploy/demo/lost-response.sh plays the same story", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		// script_front does not exist yet, so the script creates it.
		out, err := lostResponseScript(t, tp, "script_front", envoyAddr, s.backend)
		require.NoError(t, err, "lost-response.sh:\n%s", out)
		require.Contains(t, out, "no double charge")
		t.Logf("lost-response.sh passed in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("the script fails when nothing guards the backend", func(t *testing.T) {
		t.Parallel()
		// Toxiproxy straight to the backend, bypassing Envoy and idemproxy:
		// the retry runs the charge again, and the script must say so.
		out, err := lostResponseScript(t, tp, "unguarded", s.backendAddr, s.backend)
		require.Error(t, err, "lost-response.sh:\n%s", out)
		require.Contains(t, out, "FAIL: expected Idempotent-Replayed: true")
	})
}

// lostResponseScript runs deploy/demo/lost-response.sh with a new Toxiproxy
// proxy named proxy in front of upstream, and returns its output.
func lostResponseScript(t *testing.T, tp *toxi.Toxiproxy, proxy, upstream, backend string) (string, error) {
	t.Helper()
	_, err := exec.LookPath("curl")
	require.NoError(t, err, "lost-response.sh needs curl")
	front := testenv.Addr(t)
	cmd := exec.Command("bash", "../deploy/demo/lost-response.sh")
	cmd.Env = append(cmd.Environ(),
		"TOXIPROXY_API="+tp.API,
		"FRONT=http://"+front,
		"BACKEND_STATS="+backend+"/stats",
		"PROXY_NAME="+proxy,
		"PROXY_LISTEN="+front,
		"PROXY_UPSTREAM="+upstream,
		"LOST_TIMEOUT=2",
	)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// send POSTs a $50 charge, with key unless it is empty, on a connection of
// its own, and reads the answer within timeout.
func send(url, key string, timeout time.Duration) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"amount":5000}`))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Timeout: timeout, Transport: tr}).Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// chargeID is the id of a charge body.
func chargeID(t *testing.T, body []byte) string {
	t.Helper()
	var c struct{ ID string }
	require.NoError(t, json.Unmarshal(body, &c), "%s", body)
	require.NotEmpty(t, c.ID, "%s", body)
	return c.ID
}
