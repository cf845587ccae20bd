package redistopo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// MasterName is the name the sentinels monitor the primary under.
const MasterName = "mymaster"

// SentinelReadyTimeout bounds starting the topology and each wait on it.
const SentinelReadyTimeout = 30 * time.Second

// replicationArgs make full syncs quick and diskless on both ends: over
// the socket, at once, loaded straight into the replica's memory.
var replicationArgs = []string{"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
	"--repl-diskless-load", "on-empty-db", "--repl-ping-replica-period", "1"}

// SentinelOptions configure StartSentinel.
type SentinelOptions struct {
	// Bin is redis-server; "" finds it.
	Bin string
	// Dir holds the sentinels' config files, which they rewrite.
	Dir string
	// TLS, if set, gives every process a TLS port too; replication and
	// the sentinels' links to the data servers go over TLS, so the
	// sentinels name the TLS ports.
	TLS *TLS
	// DataArgs and SentinelArgs are added to the command lines of the data
	// servers and of the sentinels (ACL users, say).
	DataArgs, SentinelArgs []string
	// Places, if set, are three test hosts: host i runs data server i on
	// port 6379 and sentinel i on 26379, so a partition between hosts cuts
	// a data server and its sentinel off together. Their Dial must be one.
	Places []Place
	// DownAfter is after how long without an answer the sentinels call a
	// server down (0: 2 s); FailoverTimeout bounds a failover and spaces
	// retries of one (0: 5 s).
	DownAfter, FailoverTimeout time.Duration
}

// Ports of a placed Sentinel topology: each host has its own.
const (
	placedDataPort     = 6379
	placedSentinelPort = 26379
)

// place is where server i runs, and on which port (0: any free one).
func (o SentinelOptions) place(i, port int) (Place, int) {
	if len(o.Places) == 0 {
		return Place{}, 0
	}
	return o.Places[i], port
}

// Sentinel is one primary with two replicas, watched by three sentinels
// (quorum 2) that fail over a primary down for two seconds.
type Sentinel struct {
	// Data are the primary and replicas, the initial primary first; which
	// is the primary changes on failover.
	Data []*Server
	// Sentinels are the three sentinel processes.
	Sentinels []*Server

	dataArgs []string // SentinelOptions.DataArgs, for restarts
	dial     Dialer   // how the helpers reach the servers (Place.Dial)
}

// StartSentinel starts the primary, its replicas and the sentinels, and
// waits until the replicas are synced and every sentinel knows the primary,
// both replicas and the other two sentinels.
func StartSentinel(ctx context.Context, o SentinelOptions) (*Sentinel, error) {
	if len(o.Places) != 0 && len(o.Places) != 3 {
		return nil, fmt.Errorf("a Sentinel topology is placed on 3 hosts, not %d", len(o.Places))
	}
	st := &Sentinel{dataArgs: o.DataArgs}
	if len(o.Places) > 0 {
		st.dial = o.Places[0].Dial
	}
	place, port := o.place(0, placedDataPort)
	primary, err := StartServer(Options{Bin: o.Bin, Args: st.replicaArgs(nil), Name: "primary", Dir: subdir(o.Dir, "primary"),
		TLS: o.TLS, Place: place, Port: port})
	if err != nil {
		return nil, err
	}
	st.Data = append(st.Data, primary)
	for i := range 2 {
		name := fmt.Sprintf("replica-%d", i+1)
		place, port := o.place(i+1, placedDataPort)
		if err := st.add(&st.Data, Options{Bin: o.Bin, Name: name, Dir: subdir(o.Dir, name),
			Args: st.replicaArgs(primary), TLS: o.TLS, Place: place, Port: port}); err != nil {
			return nil, err
		}
	}
	for i := range 3 {
		conf, err := sentinelConfig(o, i, primary.ReplicationAddr())
		if err != nil {
			st.Stop()
			return nil, err
		}
		name := fmt.Sprintf("sentinel-%d", i+1)
		place, port := o.place(i, placedSentinelPort)
		if err := st.add(&st.Sentinels, Options{Bin: o.Bin, Name: name, Dir: subdir(o.Dir, name),
			Config: conf, Args: append([]string{"--sentinel"}, o.SentinelArgs...), TLS: o.TLS, Place: place, Port: port}); err != nil {
			return nil, err
		}
	}
	if err := st.WaitHealthy(ctx); err != nil {
		st.Stop()
		return nil, err
	}
	return st, nil
}

// add starts one server into list, stopping everything on failure.
func (st *Sentinel) add(list *[]*Server, o Options) error {
	s, err := StartServer(o)
	if err != nil {
		st.Stop()
		return err
	}
	*list = append(*list, s)
	return nil
}

// replicaArgs are a data server's command line: a replica of primary (nil
// for the first primary), over TLS if primary has a TLS port.
func (st *Sentinel) replicaArgs(primary *Server) []string {
	var args []string
	if primary != nil {
		host, port, _ := splitAddr(primary.ReplicationAddr())
		args = []string{"--replicaof", host, fmt.Sprint(port)}
	}
	args = append(args, replicationArgs...)
	return append(args, st.dataArgs...)
}

// sentinelConfig writes sentinel i's config file: monitor the primary with
// quorum 2, call it down after two seconds by default (one was seen to
// fail over a just-promoted primary again on a loaded machine), fail over
// within seconds.
func sentinelConfig(o SentinelOptions, i int, primary string) (string, error) {
	host, port, err := splitAddr(primary)
	if err != nil {
		return "", err
	}
	downAfter, failoverTimeout := cmp.Or(o.DownAfter, 2*time.Second), cmp.Or(o.FailoverTimeout, 5*time.Second)
	path := filepath.Join(o.Dir, fmt.Sprintf("sentinel-%d.conf", i+1))
	conf := fmt.Sprintf("dir %s\nsentinel monitor %s %s %d 2\nsentinel down-after-milliseconds %s %d\n"+
		"sentinel failover-timeout %s %d\nsentinel parallel-syncs %s 2\n", o.Dir, MasterName, host, port,
		MasterName, downAfter.Milliseconds(), MasterName, failoverTimeout.Milliseconds(), MasterName)
	return path, os.WriteFile(path, []byte(conf), 0o600)
}

// WaitHealthy waits until every running sentinel sees a primary with both
// replicas and the two other sentinels, and every replica is synced.
func (st *Sentinel) WaitHealthy(ctx context.Context) error {
	return testenv.Poll(ctx, SentinelReadyTimeout, func(ctx context.Context) error {
		for _, s := range st.Sentinels {
			m, err := sentinelMaster(ctx, st.dial, s.Addr)
			if err != nil {
				return err
			}
			if m["flags"] != "master" || m["num-slaves"] != "2" || m["num-other-sentinels"] != "2" {
				return fmt.Errorf("sentinel %s: master %s flags %s, %s replicas, %s other sentinels",
					s.Addr, m["ip"]+":"+m["port"], m["flags"], m["num-slaves"], m["num-other-sentinels"])
			}
			if err := replicasUp(ctx, st.dial, s.Addr); err != nil {
				return err
			}
		}
		primary, err := st.PrimaryAddr(ctx)
		if err != nil {
			return err
		}
		for _, d := range st.Data {
			if d.Addr != primary {
				if err := waitLinked(ctx, st.dial, d.Addr); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// sentinelMaster is SENTINEL MASTER as a map.
func sentinelMaster(ctx context.Context, dial Dialer, addr string) (map[string]string, error) {
	v, err := do(ctx, dial, addr, "SENTINEL", "MASTER", MasterName)
	if err != nil {
		return nil, fmt.Errorf("sentinel %s: %w", addr, err)
	}
	return asMap(v)
}

// replicasUp checks that the sentinel at addr sees every replica healthy.
func replicasUp(ctx context.Context, dial Dialer, addr string) error {
	v, err := do(ctx, dial, addr, "SENTINEL", "REPLICAS", MasterName)
	if err != nil {
		return fmt.Errorf("sentinel %s: %w", addr, err)
	}
	list, _ := v.([]any)
	for _, r := range list {
		m, err := asMap(r)
		if err != nil {
			return err
		}
		if m["flags"] != "slave" || m["master-link-status"] != "ok" {
			return fmt.Errorf("sentinel %s: replica %s:%s flags %s link %s", addr, m["ip"], m["port"], m["flags"], m["master-link-status"])
		}
	}
	return nil
}

// SentinelAddrs are the sentinels' addresses, for redis.FailoverOptions.
func (st *Sentinel) SentinelAddrs() []string {
	var addrs []string
	for _, s := range st.Sentinels {
		addrs = append(addrs, s.Addr)
	}
	return addrs
}

// SentinelTLSAddrs are the sentinels' TLS addresses (SentinelOptions.TLS).
func (st *Sentinel) SentinelTLSAddrs() []string {
	var addrs []string
	for _, s := range st.Sentinels {
		addrs = append(addrs, s.TLSAddr)
	}
	return addrs
}

// dataServer is the data server whose plain or TLS address is addr.
func (st *Sentinel) dataServer(addr string) (*Server, error) {
	for _, d := range st.Data {
		if d.Addr == addr || d.TLSAddr == addr {
			return d, nil
		}
	}
	return nil, fmt.Errorf("the sentinels' primary %s is none of ours", addr)
}

// NewClient returns a Sentinel-aware client; the caller closes it.
func (st *Sentinel) NewClient() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: MasterName, SentinelAddrs: st.SentinelAddrs(), Dialer: st.dial})
}

// Stop kills every process of the topology.
func (st *Sentinel) Stop() {
	for _, s := range append(st.Sentinels, st.Data...) {
		s.Stop()
	}
}

// NewSentinel is StartSentinel for a test (skipped under -short): every
// process is stopped in t.Cleanup, its output printed if the test failed.
func NewSentinel(t testenv.TB) *Sentinel {
	t.Helper()
	return NewSentinelWith(t, SentinelOptions{})
}

// NewSentinelWith is NewSentinel with options; Bin and Dir are the test's.
func NewSentinelWith(t testenv.TB, o SentinelOptions) *Sentinel {
	t.Helper()
	if o.TLS != nil {
		testenv.NeedsRedisTLS(t)
	}
	o.Bin, o.Dir = testenv.RedisServerBin(t), t.TempDir()
	st, err := StartSentinel(t.Context(), o)
	if err != nil {
		t.Fatalf("redistopo: %v", err)
	}
	for _, s := range append(st.Sentinels, st.Data...) {
		cleanup(t, s)
	}
	return st
}

// Client returns a Sentinel-aware client, closed in t.Cleanup.
func (st *Sentinel) Client(t testenv.TB) *redis.Client {
	c := st.NewClient()
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var errNoSentinel = errors.New("no sentinel is running")
