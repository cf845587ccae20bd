package envoy

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/toxi"
)

// leaseFlags give the fault tests a lease that is lost quickly: a 1 s lock
// renewed every 300 ms.
var leaseFlags = []string{"--lock-ttl", "1s", "--heartbeat", "300ms"}

// takeoverFlags add the opt-in weaker policy under which a lost lease lets
// another request take the key: the scenarios the fencing token is for.
var takeoverFlags = append([]string{"--on-unknown", "rerun-after-ttl"}, leaseFlags...)

// patientEnvoy lets an Envoy wait 10 s instead of 2 s for each idemproxy
// answer. With its idemproxy frozen, Envoy's message_timeout runs from the
// moment it sends a message (here: the upstream's response headers) and
// would otherwise answer the client 504 and reset the stream before the
// frozen idemproxy resumes and sees the response.
var patientEnvoy = [2]string{"message_timeout: 2s", "message_timeout: 10s"}

// TestEndToEnd_LeaseLost is scenario 6 of docs/reliability.md, with the opt-in
// --on-unknown=rerun-after-ttl: replica A holds a key while the backend runs
// the request, and freezes (SIGSTOP) past the lock TTL; replica B, on the
// same Redis, takes the key and completes. (By default B never takes it:
// TestEndToEnd_LeaseRunsOut.) When
// A resumes and its request finishes, A must not overwrite B's record: B's
// response is the one replayed, and A counts the lost lease.
func TestEndToEnd_LeaseLost(t *testing.T) {
	t.Parallel()
	shared := startShared(t)
	a := addFrontend(t, shared, frontendConfig{idemproxyArgs: takeoverFlags, envoyEdits: [][2]string{patientEnvoy}})
	b := addFrontend(t, shared, frontendConfig{idemproxyArgs: takeoverFlags})
	key := newKey(t)
	// The authority is part of the scope: both Envoys get the Host that
	// clients of one service behind two replicas would send.
	hdrs := []string{"Host", "payments.example", "Idempotency-Key", key}
	// Long enough for A to freeze, its lock to expire and B to take over
	// while A's backend run is still going.
	const path, body = "/slow?delay=2s", `{"amount":5000}`

	aReply := make(chan reply, 1)
	go func() {
		r, err := a.tryDo("POST", path, body, hdrs...)
		if err != nil {
			t.Logf("A: %v", err)
		}
		aReply <- r
	}()
	testenv.WaitFor(t, 10*time.Second, "A's request at the backend", func() bool { return shared.executions(t, key) == 1 })
	resume := pauseProcess(t, a.idemproxy)
	frozen := time.Now()

	// B's client retries; 409 while A's lock lives, then B runs it.
	var conflicts int
	var bFirst reply
	var tookOver time.Duration
	testenv.WaitFor(t, 10*time.Second, "B to take the key once A's lock expired", func() bool {
		tookOver = time.Since(frozen)
		bFirst = b.do(t, "POST", path, body, hdrs...)
		if bFirst.status == http.StatusConflict && bFirst.problemType() == problem+"in-progress" {
			conflicts++
			time.Sleep(50 * time.Millisecond)
			return false
		}
		return true
	})
	require.Equal(t, http.StatusOK, bFirst.status, "%s", bFirst.body)
	require.False(t, bFirst.replayed())
	// The documented limit: once a lease is lost, the request runs twice
	// unless the backend checks the fence (TestEndToEnd_StaleFence).
	require.Equal(t, 2, shared.executions(t, key))

	frozenFor := time.Since(frozen)
	resume()
	var aFirst reply
	select {
	case aFirst = <-aReply:
	case <-time.After(15 * time.Second):
		require.FailNow(t, "A's request never finished after A resumed")
	}
	require.Equal(t, http.StatusOK, aFirst.status, "A's client gets A's own response: %s", aFirst.body)
	aID, bID := chargeID(t, aFirst.body), chargeID(t, bFirst.body)
	require.NotEqual(t, aID, bID)

	// A stores before it lets the last chunk go, so the loss is counted by now.
	require.EqualValues(t, 1, a.metric(t, `idemproxy_responses_total{result="lease_lost"}`))
	require.EqualValues(t, 1, a.metric(t, `idemproxy_leases_lost_total{stage="complete"}`))
	require.EqualValues(t, 0, a.metric(t, `idemproxy_responses_total{result="stored"}`))
	require.EqualValues(t, 1, b.metric(t, `idemproxy_responses_total{result="stored"}`))
	for name, s := range map[string]*stack{"A": a, "B": b} {
		r := s.do(t, "POST", path, body, hdrs...)
		require.True(t, r.replayed(), "replay through %s", name)
		require.Equal(t, bID, chargeID(t, r.body), "through %s, B's response replays, not A's", name)
	}
	require.Equal(t, 2, shared.executions(t, key))
	t.Logf("lease lost: A frozen %v; B: %d x 409, took the key %v after the freeze; A answered %d (charge %s), B %d (charge %s); "+
		"replayed: B's; A: lease_lost %v, leases_lost{renew} %v, {complete} %v; backend executions %d, fences %v",
		frozenFor.Round(time.Millisecond), conflicts, tookOver.Round(time.Millisecond), aFirst.status, aID, bFirst.status, bID,
		a.metric(t, `idemproxy_responses_total{result="lease_lost"}`),
		a.metric(t, `idemproxy_leases_lost_total{stage="renew"}`), a.metric(t, `idemproxy_leases_lost_total{stage="complete"}`),
		shared.executions(t, key), shared.stats(t).Fences[key])
}

// TestEndToEnd_StaleFence is scenario 9 of docs/reliability.md, with the opt-in
// --on-unknown=rerun-after-ttl: after a lost lease, the stale execution is refused by a backend that checks the
// fencing token. A's request (fence n) is held on its way to the backend by
// a Toxiproxy latency toxic while A freezes past the lock TTL; B takes the
// key (fence n+1) and runs it; A's request then arrives with the older fence
// and the backend refuses it without running it.
func TestEndToEnd_StaleFence(t *testing.T) {
	t.Parallel()
	shared := startShared(t)
	tp := toxi.Start(t, binDir)
	late := testenv.Addr(t)
	tp.CreateProxy(t, "late_backend", late, shared.backendAddr)
	// A request from A reaches the backend 4 s after Envoy A sent it:
	// longer than A's lock takes to expire once A is frozen plus B's whole run.
	tp.AddToxic(t, "late_backend", "late", "latency", "upstream", map[string]any{"latency": 4000})
	a := addFrontend(t, shared, frontendConfig{idemproxyArgs: takeoverFlags, envoyEdits: [][2]string{patientEnvoy}, backendAddr: late})
	b := addFrontend(t, shared, frontendConfig{idemproxyArgs: takeoverFlags})
	key := newKey(t)
	hdrs := []string{"Host", "payments.example", "Idempotency-Key", key}
	const path, body = "/charge", `{"amount":5000}`

	aReply := make(chan reply, 1)
	go func() {
		r, err := a.tryDo("POST", path, body, hdrs...)
		if err != nil {
			t.Logf("A: %v", err)
		}
		aReply <- r
	}()
	// Once Envoy A started the upstream request, idemproxy A has granted
	// the key (fence 1) and answered; freezing it now loses the lease.
	testenv.WaitFor(t, 10*time.Second, "A's request on its way to the backend", func() bool {
		return a.envoyStat(t, "cluster.backend.upstream_rq_total") == 1
	})
	resume := pauseProcess(t, a.idemproxy)

	var conflicts int
	var bFirst reply
	testenv.WaitFor(t, 10*time.Second, "B to take the key once A's lock expired", func() bool {
		bFirst = b.do(t, "POST", path, body, hdrs...)
		if bFirst.status == http.StatusConflict && bFirst.problemType() == problem+"in-progress" {
			conflicts++
			time.Sleep(50 * time.Millisecond)
			return false
		}
		return true
	})
	require.Equal(t, http.StatusOK, bFirst.status, "%s", bFirst.body)
	st := shared.stats(t)
	require.Equal(t, 1, st.Keys[key], "B ran first; A's request is still held by Toxiproxy")
	require.EqualValues(t, 2, st.Fences[key], "B's grant is the key's second")
	require.Zero(t, st.StaleFences[key])

	testenv.WaitFor(t, 10*time.Second, "A's late request to reach the backend", func() bool {
		return shared.stats(t).StaleFences[key] == 1
	})
	resume()
	var aFirst reply
	select {
	case aFirst = <-aReply:
	case <-time.After(15 * time.Second):
		require.FailNow(t, "A's request never finished after A resumed")
	}
	require.Equal(t, http.StatusConflict, aFirst.status, "the backend refused A's stale fence: %s", aFirst.body)
	require.Contains(t, string(aFirst.body), "stale fence")

	st = shared.stats(t)
	require.Equal(t, 1, st.Keys[key], "the stale request did not execute")
	require.Equal(t, 1, st.StaleFences[key])
	require.EqualValues(t, 2, st.Fences[key])
	require.EqualValues(t, 1, a.metric(t, `idemproxy_responses_total{result="lease_lost"}`),
		"A saw the backend's refusal and did not store it over B's response")
	bID := chargeID(t, bFirst.body)
	for name, s := range map[string]*stack{"A": a, "B": b} {
		r := s.do(t, "POST", path, body, hdrs...)
		require.True(t, r.replayed(), "replay through %s", name)
		require.Equal(t, bID, chargeID(t, r.body), "through %s, B's response replays", name)
	}
	t.Logf("stale fence: B %d x 409 then 200 with fence %d; A's request arrived with fence 1 and got %d %s; "+
		"backend executions %d, stale_fences %d; A: lease_lost %v",
		conflicts, st.Fences[key], aFirst.status, bytes.TrimSpace(aFirst.body), st.Keys[key], st.StaleFences[key],
		a.metric(t, `idemproxy_responses_total{result="lease_lost"}`))
}
