package envoy

// The faults after which the previous defaults ran a key a second time,
// each now with the shipped defaults: one execution per key, and the exact
// answer a retry gets.

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestNeverTwice_ClientHangsUpMidBody: the client reads the 200 status line,
// then hangs up before the body ends, and retries. The status was known, so
// the request ran: the retry gets 409 response-not-stored naming the
// status, never a second execution (the previous version treated it as an
// unknown outcome: 409 for the lock TTL, then a re-run).
func TestNeverTwice_ClientHangsUpMidBody(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--lock-ttl", "1s", "--heartbeat", "300ms")
	key := newKey(t)
	// 512 KiB in 32 KiB chunks, 50 ms apart: the body takes most of a second.
	const path = "/large?bytes=524288&pause=50ms"

	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(s.url, "http://"), 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: payments.example\r\nIdempotency-Key: %s\r\nContent-Length: 0\r\n\r\n", path, key)
	require.NoError(t, err)
	status, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.1 200 OK\r\n", status)
	require.NoError(t, conn.Close(), "the client hangs up mid-body")
	require.Equal(t, 1, s.executions(t, key))

	// The stream's end reaches idemproxy just after the hang-up: until it
	// stores the outcome, a retry may still see the key in progress.
	var r reply
	testenv.WaitFor(t, 10*time.Second, "the key to be settled", func() bool {
		r = s.do(t, "POST", path, "", "Host", "payments.example", "Idempotency-Key", key)
		return r.problemType() != problem+"in-progress"
	})
	require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
	require.Equal(t, problem+"response-not-stored", r.problemType())
	require.Contains(t, string(r.body), "status 200")
	require.Contains(t, string(r.body), "never reached the proxy in full")
	time.Sleep(1500 * time.Millisecond) // past the lock TTL: nothing changes with time
	again := s.do(t, "POST", path, "", "Host", "payments.example", "Idempotency-Key", key)
	require.Equal(t, problem+"response-not-stored", again.problemType())
	require.Equal(t, 1, s.executions(t, key), "the request ran once")
	require.EqualValues(t, 1, s.metric(t, `idemproxy_responses_total{result="stored_incomplete"}`))
	t.Logf("client hung up after %q: retry got %d %s; executions %d", strings.TrimSpace(status), r.status, r.problemType(), s.executions(t, key))
}

// TestNeverTwice_ShutdownCutsJob: SIGTERM while a job runs that outlives
// --shutdown-grace. idemproxy cuts the stream and marks the key an unknown
// outcome before it exits; a new idemproxy then refuses the key with 409
// outcome-unknown, also after the lock TTL (the previous version let the
// lock expire and ran the job again).
func TestNeverTwice_ShutdownCutsJob(t *testing.T) {
	t.Parallel()
	const lockTTL = 2 * time.Second
	flags := []string{"--lock-ttl", lockTTL.String(), "--heartbeat", "500ms"}
	s := startStack(t, append([]string{"--shutdown-grace", "500ms"}, flags...)...)
	grpcAddr := s.idemproxy.LogAddr(t, "grpc listening")
	key := newKey(t)
	const path = "/slow?delay=5s"

	first := make(chan reply, 1)
	go func() {
		r := s.send("POST", path, "", "Idempotency-Key", key)
		first <- r
	}()
	testenv.WaitFor(t, 10*time.Second, "the job at the backend", func() bool { return s.executions(t, key) == 1 })
	require.NoError(t, s.idemproxy.Signal(syscall.SIGTERM))
	select {
	case <-s.idemproxy.Done():
	case <-time.After(10 * time.Second):
		require.FailNow(t, "idemproxy did not exit after SIGTERM")
	}
	stopped := time.Now()
	var cut reply
	select {
	case cut = <-first:
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the cut request never ended")
	}
	require.Contains(t, s.idemproxy.Output(), "key held until an operator clears it", "the key was marked before exiting")

	s.idemproxy, _, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), grpcAddr, "debug",
		append([]string{"--admin-token", adminToken, "--held-keys-interval", "200ms"}, flags...)...)
	var retries int
	testenv.WaitFor(t, 2*lockTTL+15*time.Second, "retries past twice the lock TTL", func() bool {
		r, err := s.tryDo("POST", path, "", "Idempotency-Key", key)
		require.NoError(t, err)
		if r.problemType() == problem+"proxy-unavailable" && retries == 0 {
			return false // Envoy still reconnecting to the new idemproxy
		}
		require.Equal(t, http.StatusConflict, r.status, "%s", r.body)
		require.Equal(t, problem+"outcome-unknown", r.problemType())
		retries++
		time.Sleep(200 * time.Millisecond) // pacing, not synchronisation
		return time.Since(stopped) > 2*lockTTL
	})
	require.Equal(t, 1, s.executions(t, key), "the cut job never runs again")

	// The operator finds the held key without knowing the client's key,
	// and settles it by id.
	testenv.WaitFor(t, 5*time.Second, "the held-keys gauge", func() bool {
		return s.metric(t, `idemproxy_held_keys{state="outcome_unknown"}`) == 1
	})
	var page struct {
		Keys []struct {
			ID, State, Scope string
			Fence            int64
			Age              int64 `json:"age_ns"`
		}
		Cursor string
	}
	s.adminJSON(t, http.MethodGet, "state=outcome_unknown", &page)
	require.Len(t, page.Keys, 1)
	held := page.Keys[0]
	require.Equal(t, "outcome_unknown", held.State)
	require.Equal(t, strings.TrimPrefix(s.url, "http://"), held.Scope)
	require.Positive(t, held.Fence)
	require.Greater(t, time.Duration(held.Age), 2*lockTTL)
	require.Equal(t, "0", page.Cursor)
	var deleted map[string]bool
	s.adminJSON(t, http.MethodDelete, "id="+held.ID, &deleted)
	require.True(t, deleted["deleted"])
	require.Equal(t, http.StatusOK, s.do(t, "POST", "/slow?delay=10ms", "", "Idempotency-Key", newKey(t)).status)
	t.Logf("shutdown cut the job: client got %d; %d retries over %v after the stop, all 409 outcome-unknown; executions %d; "+
		"admin listing showed it (fence %d, age %v) and it was cleared by id",
		cut.status, retries, time.Since(stopped).Round(time.Millisecond), s.executions(t, key),
		held.Fence, time.Duration(held.Age).Round(time.Second))
}

// TestNeverTwice_LeaseRunsOut: replica A freezes (SIGSTOP) past its lease
// while the backend runs the request. By default replica B never takes
// the key: its client gets 409 in-progress, then 409 outcome-unknown. When
// A resumes, its request completes and is stored: from then on both
// replicas replay A's response. (With the opt-in takeover, B runs it a
// second time: TestEndToEnd_LeaseLost.)
func TestNeverTwice_LeaseRunsOut(t *testing.T) {
	t.Parallel()
	shared := startShared(t)
	a := addFrontend(t, shared, frontendConfig{idemproxyArgs: leaseFlags, envoyEdits: [][2]string{patientEnvoy}})
	b := addFrontend(t, shared, frontendConfig{idemproxyArgs: leaseFlags})
	key := newKey(t)
	hdrs := []string{"Host", "payments.example", "Idempotency-Key", key}
	const path, body = "/slow?delay=2s", `{"amount":5000}`

	aReply := make(chan reply, 1)
	go func() {
		r := a.send("POST", path, body, hdrs...)
		aReply <- r
	}()
	testenv.WaitFor(t, 10*time.Second, "A's request at the backend", func() bool { return shared.executions(t, key) == 1 })
	resume := pauseProcess(t, a.idemproxy)
	frozen := time.Now()

	var inProgress, unknown int
	testenv.WaitFor(t, 15*time.Second, "B's retries to meet the unknown outcome", func() bool {
		r := b.do(t, "POST", path, body, hdrs...)
		require.Equal(t, http.StatusConflict, r.status, "B never runs the key: %s", r.body)
		switch r.problemType() {
		case problem + "in-progress":
			require.Zero(t, unknown)
			inProgress++
		case problem + "outcome-unknown":
			unknown++
		default:
			require.FailNow(t, "unexpected problem", "%s", r.body)
		}
		time.Sleep(50 * time.Millisecond) // pacing, not synchronisation
		return unknown >= 3
	})
	frozenFor := time.Since(frozen)
	resume()
	var aFirst reply
	select {
	case aFirst = <-aReply:
	case <-time.After(15 * time.Second):
		require.FailNow(t, "A's request never finished after A resumed")
	}
	require.Equal(t, http.StatusOK, aFirst.status, "%s", aFirst.body)
	for name, s := range map[string]*stack{"A": a, "B": b} {
		r := s.do(t, "POST", path, body, hdrs...)
		require.True(t, r.replayed(), "replay through %s: %d %s", name, r.status, r.body)
		require.Equal(t, chargeID(t, aFirst.body), chargeID(t, r.body))
	}
	require.Equal(t, 1, shared.executions(t, key), "one execution, whatever the freeze")
	require.EqualValues(t, 0, a.metric(t, `idemproxy_responses_total{result="lease_lost"}`))
	t.Logf("lease ran out: A frozen %v; B: %d x 409 in-progress, %d x 409 outcome-unknown, never ran; A resumed, stored, replayed by both; executions %d",
		frozenFor.Round(time.Millisecond), inProgress, unknown, shared.executions(t, key))
}
