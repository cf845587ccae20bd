package envoy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// The ACL user a managed Redis hands out, as docs/redis-topologies.md gives it: the
// records and their shard channels (waiting duplicates), no dangerous
// commands but INFO (the eviction and persistence check) and the cluster
// topology reads.
var leastPrivilegeACL = []string{"--user", "idemproxy", "on", ">s3cret-pw", "~idemproxy:*", "&idemproxy:*",
	"+@all", "-@dangerous", "+info", "+cluster|slots", "+cluster|shards", "+cluster|info"}

// TestTopology_TLS: idemproxy reaches a Redis Cluster and a Sentinel setup
// over TLS only (rediss:// to the TLS ports, --redis-ca), as the ACL user
// above. A charge runs once and replays, a waiting duplicate gets the
// replay over the shard channel, every primary served the ACL user, and
// under Sentinel a failover is followed over TLS too.
func TestTopology_TLS(t *testing.T) {
	testenv.NeedsBinaries(t)
	testenv.NeedsRedisTLS(t)
	pki := newTestPKI(t)
	files := &redistopo.TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CAFile: pki.CA,
		ClientCertFile: pki.ClientCert, ClientKeyFile: pki.ClientKey}
	backend := startBackendOnly(t)
	// Pub/sub must deliver the completion: no re-check to fall back on.
	args := []string{"--redis-ca", pki.CA, "--redis-replica-timeout", "800ms",
		"--redis-timeout", "1s", "--wait-recheck", "1h"}

	t.Run("cluster", func(t *testing.T) {
		cl := redistopo.NewClusterWith(t, redistopo.ClusterOptions{TLS: files, Args: leastPrivilegeACL})
		addrs := cl.TLSAddrs()
		url := "rediss://idemproxy:s3cret-pw@" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
		s := topoFrontend(t, backend, "cluster", url, args...)
		chargeReplayWait(t, s)
		for range 60 { // keys on every primary: (2/3)^60 that one has none
			chargeAndReplay(t, s)
		}
		primaries, err := cl.Primaries(t.Context())
		require.NoError(t, err)
		require.Len(t, primaries, 3)
		for _, p := range primaries {
			require.Positive(t, hashes(t, p), "%s holds records", p.Addr)
			requireClientUser(t, []*redistopo.Server{p}, "idemproxy")
		}
	})

	t.Run("sentinel", func(t *testing.T) {
		st := redistopo.NewSentinelWith(t, redistopo.SentinelOptions{TLS: files, DataArgs: leastPrivilegeACL,
			SentinelArgs: []string{"--user", "watcher", "on", ">w4tch-pw", "allchannels", "+@all"}})
		addrs := st.SentinelTLSAddrs()
		// The URL's user is the sentinels'; the data nodes' goes in
		// username= and password= (go-redis's rule, as docs/redis-topologies.md says).
		url := "rediss://watcher:w4tch-pw@" + addrs[0] + "?master_name=" + redistopo.MasterName +
			"&addr=" + strings.Join(addrs[1:], "&addr=") + "&username=idemproxy&password=s3cret-pw"
		s := topoFrontend(t, backend, "sentinel", url, args...)
		before := chargeReplayWait(t, s)
		primary, err := st.Primary(t.Context())
		require.NoError(t, err)
		requireClientUser(t, []*redistopo.Server{primary}, "idemproxy")
		requireClientUser(t, st.Sentinels, "watcher")

		killed := time.Now()
		st.Kill(primary)
		promoted, err := st.WaitFailover(t.Context(), primary)
		require.NoError(t, err)
		t.Logf("sentinel over TLS: promoted %v after the kill", time.Since(killed).Round(10*time.Millisecond))
		// The killed node is a replica a failover could promote: until it
		// is back, new keys are refused (--redis-min-replicas all).
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", randomKey())
		require.Equal(t, problem+"store-unavailable", r.problemType(), "%d %s", r.status, r.body)
		require.NoError(t, st.Restart(t.Context(), primary))
		// idemproxy follows the new primary by itself, over TLS: the key
		// stored before the failover (on a replica first) replays, and
		// new keys run once, after at most a few 503s while it switches.
		testenv.WaitFor(t, 20*time.Second, "a new key served on the new primary", func() bool {
			r, err := s.tryDo("POST", "/charge", "", "Idempotency-Key", randomKey())
			return err == nil && r.status == http.StatusOK
		})
		t.Logf("sentinel over TLS: a new key served %v after the kill, once the killed node was back", time.Since(killed).Round(10*time.Millisecond))
		again := s.do(t, "POST", "/wait/slow?delay=300ms", "", "Idempotency-Key", before.key)
		require.True(t, again.replayed(), "%d %s", again.status, again.body)
		require.Equal(t, string(before.body), string(again.body))
		chargeReplayWait(t, s)
		requireClientUser(t, []*redistopo.Server{promoted}, "idemproxy")
	})
}

// charged is a key that ran, with the body of its response.
type charged struct {
	key  string
	body []byte
}

// chargeReplayWait runs a slow charge on the /wait/ route with a duplicate
// sent while it runs, then a retry: the charge runs once, the duplicate
// waits for the original's answer, the retry replays it.
func chargeReplayWait(t *testing.T, s *stack) charged {
	t.Helper()
	k := newKey(t)
	first := s.goDo("POST", "/wait/slow?delay=300ms", "", "Idempotency-Key", k)
	time.Sleep(100 * time.Millisecond)
	dup := s.goDo("POST", "/wait/slow?delay=300ms", "", "Idempotency-Key", k)
	orig := await(t, first, 15*time.Second, "the original")
	require.Equal(t, classExecuted, classify(orig), "%d %s", orig.status, orig.body)
	waited := await(t, dup, 15*time.Second, "the waiting duplicate")
	require.True(t, waited.replayed(), "the duplicate got the replay: %d %s", waited.status, waited.body)
	require.Equal(t, string(orig.body), string(waited.body))
	again := s.do(t, "POST", "/wait/slow?delay=300ms", "", "Idempotency-Key", k)
	require.True(t, again.replayed(), "%d %s", again.status, again.body)
	require.Equal(t, 1, s.executions(t, k))
	return charged{key: k, body: orig.body}
}

// requireClientUser requires one of servers to have a client logged in as
// user: the URL's credentials were used, not the default user's. (go-redis
// keeps a connection to one sentinel, the one it follows the primary on.)
func requireClientUser(t *testing.T, servers []*redistopo.Server, user string) {
	t.Helper()
	var lists []string
	for _, srv := range servers {
		list, err := srv.Client(t).ClientList(t.Context()).Result()
		require.NoError(t, err)
		if strings.Contains(list, " user="+user+" ") {
			return
		}
		lists = append(lists, srv.Addr+":\n"+list)
	}
	t.Fatalf("no client logged in as %s:\n%s", user, strings.Join(lists, "\n"))
}
