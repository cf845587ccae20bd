package envoy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/netlab"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestPartition_LateAcquire (issue 18, item 2): an acquire delayed in the
// network until after idemproxy gave up on it must not take its key.
//
// idemproxy on i1 reaches Redis on r1. i1's packets to r1 are dropped
// while a keyed request comes in: its acquire is written, unacknowledged,
// and times out (503, nothing upstream). The connection that carries it
// is then held (its packets still dropped) and everything else healed, so
// the release idemproxy sends in its place reaches Redis first and finds
// nothing; only then is the held connection let through, and TCP's
// retransmission delivers the stale acquire. It carries a deadline on
// r1's clock and creates nothing: the client's retry runs, once. (Without
// the deadline, TestStore_lateAcquire shows, the same late script makes a
// lock nobody renews, and the key reads in progress, then as an unknown
// outcome for the retention.)
func TestPartition_LateAcquire(t *testing.T) {
	testenv.NeedsBinaries(t)
	lab := netlab.New(t)
	client, backend := lab.AddHost(t, "c1"), lab.AddHost(t, "b1")
	i1, r1 := lab.AddHost(t, "i1"), lab.AddHost(t, "r1")
	web := client.HTTPClient(10*time.Second, 16)
	t.Cleanup(web.CloseIdleConnections)
	b := backend.Start(t, testenv.Command{Name: "backend", Path: filepath.Join(binDir, "backend"),
		Args: []string{"--addr", backend.Addr(partitionBackendPort)}})
	backendURL := "http://" + backend.Addr(partitionBackendPort)
	b.Ready(t, 15*time.Second, testenv.HTTPOK(web, backendURL+"/healthz"))
	srv, err := redistopo.StartServer(redistopo.Options{Bin: testenv.RedisServerBin(t), Port: 6379, Dir: t.TempDir(),
		Place: r1.Place(client)})
	if srv != nil {
		t.Cleanup(srv.Stop)
	}
	require.NoError(t, err)
	// One Redis call at a time on i1 besides the request's: the health
	// check reads the clock at start, then not again during the test.
	startPartitionIdemproxy(t, i1, "standalone", srv.URL(), []string{"--health-interval", "1h"})
	startPartitionEnvoy(t, i1, backend)
	url := "http://" + i1.Addr(partitionEnvoyPort) + "/charge"
	post := func(key string) (int, string) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", key)
		resp, err := web.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Content-Type")
	}
	warm := fmt.Sprintf("warm-%d", time.Now().UnixNano())
	status, _ := post(warm) // loads the script, warms the pool
	require.Equal(t, http.StatusOK, status)

	key := fmt.Sprintf("late-%d", time.Now().UnixNano())
	require.NoError(t, lab.CutOneWay([]*netlab.Host{i1}, []*netlab.Host{r1}))
	answered := make(chan int, 1)
	go func() {
		s, _ := post(key)
		answered <- s
	}()
	holds, err := lab.HoldUnacked(t.Context(), i1, []*netlab.Host{r1}, 5*time.Second)
	require.NoError(t, err, "the acquire is written, and stuck")
	t.Cleanup(func() {
		for _, h := range holds {
			_ = h.Release()
		}
	})
	require.NotEmpty(t, holds, "a connection carries the acquire")
	first := testenv.Receive(t, answered, 10*time.Second, "the answer to the request whose acquire is stuck")
	require.Equal(t, http.StatusServiceUnavailable, first, "the acquire timed out: 503, nothing upstream")
	// The release after the failed acquire, on another connection, finds
	// nothing: released_early counts it.
	testenv.WaitFor(t, 10*time.Second, "the release after the failed acquire", func() bool {
		v, err := testenv.ReadMetric(t.Context(), i1.HTTPClient(time.Second, 1), "http://"+partitionAdminAddr+"/metrics",
			`idemproxy_responses_total{result="released_early"}`)
		return err == nil && v >= 1
	})
	commands := func() int {
		info, err := srv.Client(t).Info(t.Context(), "commandstats").Result()
		require.NoError(t, err)
		calls, _, _ := strings.Cut(strings.TrimPrefix(infoField(info, "cmdstat_evalsha"), "calls="), ",")
		n, _ := strconv.Atoi(calls)
		return n
	}
	before := commands()
	for _, h := range holds {
		require.NoError(t, h.Release())
	}
	testenv.WaitFor(t, 30*time.Second, "the stale acquire reaching Redis by retransmission", func() bool {
		return commands() > before
	})
	n, err := srv.Client(t).Keys(context.WithoutCancel(t.Context()), "idemproxy:{*}").Result()
	require.NoError(t, err)
	require.Len(t, n, 1, "only the warm-up's record: the late acquire created no lock")
	status, _ = post(key)
	require.Equal(t, http.StatusOK, status, "the retry runs")
	require.Equal(t, 1, executionsOf(t, web, backendURL, key), "once")
}

// infoField is one field of an INFO reply.
func infoField(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// executionsOf reads the backend's count for key.
func executionsOf(t *testing.T, c *http.Client, backendURL, key string) int {
	t.Helper()
	resp, err := c.Get(backendURL + "/stats")
	require.NoError(t, err)
	defer resp.Body.Close()
	var st backendStats
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	return st.Keys[key]
}
