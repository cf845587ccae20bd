package redisstore

// What the health check reads of Redis, in one round trip per primary:
// whether it serves, whether it can be trusted with records (eviction
// policy, persistence), its replicas, whether the ACL user may publish on
// idemproxy's channels, and its clock. On a cluster each primary is asked
// on its own connection with its own deadline, so a node that does not
// answer (cut off by a partition) costs its own answer only: go-redis's
// ForEachMaster first reloads the slot map from a random node, and when
// that node is the unreachable one, every primary counts as failed.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// NodeFacts is what one refresh learnt from one primary.
type NodeFacts struct {
	Addr     string // "" outside a cluster
	Err      error  // it did not answer, or does not serve
	Policy   string // maxmemory_policy
	Persist  string // aof, rdb, none, unknown
	Replicas int    // connected_slaves
	// Channels is why the ACL user may not publish on idemproxy's
	// channels (NOPERM), nil when it may or the check said nothing.
	Channels error
	// Offline are the promotable replicas of this primary it did not list
	// as online: a write that must reach every one of them is refused.
	Offline []string

	mark  markerRead        // its store-reset marker, when asked for
	slots []redis.SlotRange // cluster: the slots it serves
}

// markerRead is one primary's store-reset marker as the health check read
// it: the key (of the lowest slot it serves, on a cluster), the marker,
// and the primary's clock at the read (ms). key is "" when none was read
// (no Markers, or a primary that serves no slot); err when the read failed
// (a slot that moved since the view: nothing is decided this time).
type markerRead struct {
	key string
	m   marker
	now int64
	err error
}

// Probe is what a refresh asks of every primary beyond its facts.
type Probe struct {
	// Channel is a channel under the key prefix that nobody subscribes
	// to: a PUBLISH there tells whether the ACL user may use the channels
	// that wake waiting duplicates.
	Channel string
	// Markers, when set, has each primary's store-reset marker read.
	Markers *Markers
}

// Facts is one refresh of the whole topology.
type Facts struct {
	Nodes []NodeFacts
	// ViewErr says why the replicas a failover could promote could not
	// be read this time (sentinels or nodes unreachable); the last view
	// read is kept.
	ViewErr error
}

// Refresh reads every primary's facts and the replicas a failover could
// promote, and keeps both for the durable writes and the acquire
// deadlines. An error means no primary could even be listed.
func (t *Topology) Refresh(ctx context.Context, probe Probe) (Facts, error) {
	var f Facts
	var view *replicaView
	primaries := []string{""}
	switch t.mode {
	case ModeCluster:
		// Half the time for the nodes' views, half for the primaries'
		// facts: a node that answers neither costs its own answers only.
		vctx, cancel := halfOf(ctx)
		v, list, err := t.clusterView(vctx, t.tlsOn)
		cancel()
		if err != nil {
			return f, err
		}
		view, primaries = v, list
		if len(primaries) == 0 {
			return f, errors.New("the cluster lists no primary")
		}
	case ModeSentinel:
		vctx, cancel := halfOf(ctx)
		view, f.ViewErr = t.sentinelView(vctx)
		cancel()
		if f.ViewErr != nil {
			view = t.lastView()
		}
	default:
		view = &replicaView{}
	}
	f.Nodes = make([]NodeFacts, len(primaries))
	online := make([]map[string]bool, len(primaries))
	var wg sync.WaitGroup
	for i, addr := range primaries {
		wg.Go(func() {
			var c redis.Cmdable = t.client
			if t.mode == ModeCluster {
				c = t.node(addr)
			}
			mk := ""
			if probe.Markers != nil {
				if slot, ok := lowestSlot(view.slots[addr]); ok || t.mode != ModeCluster {
					mk = probe.Markers.key(slot)
				}
			}
			f.Nodes[i], online[i] = t.askNode(ctx, c, addr, probe.Channel, mk)
			f.Nodes[i].Addr, f.Nodes[i].slots = addr, view.slots[addr]
		})
	}
	wg.Wait()
	next := *view
	next.online = map[string]map[string]bool{}
	for i, addr := range primaries {
		next.online[addr] = online[i]
	}
	t.view.Store(&next)
	for i, addr := range primaries {
		if p, err := next.planFor(t.mode, addr); err == nil && f.Nodes[i].Err == nil {
			f.Nodes[i].Offline = p.offline
		}
	}
	return f, nil
}

// lowestSlot is the first slot of ranges; false when there is none.
func lowestSlot(ranges []redis.SlotRange) (int, bool) {
	if len(ranges) == 0 {
		return 0, false
	}
	low := ranges[0].Start
	for _, r := range ranges[1:] {
		low = min(low, r.Start)
	}
	return int(low), true
}

// halfOf is ctx bounded by half the time left before its deadline.
func halfOf(ctx context.Context) (context.Context, context.CancelFunc) {
	d, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Until(d)/2)
}

// lastView is the view of the last refresh, or an empty one.
func (t *Topology) lastView() *replicaView {
	if v := t.view.Load(); v != nil {
		return v
	}
	return &replicaView{}
}

// askNode reads one primary's facts in one round trip. INFO works where
// CONFIG is disabled (managed Redis); CONFIG GET save only refines "no
// AOF" into RDB or nothing, and may be refused. On a cluster node, CLUSTER
// INFO says whether the cluster lets it serve: with a slot uncovered,
// every node refuses (CLUSTERDOWN) unless cluster-require-full-coverage is
// off. online are the addresses of the replicas it lists as online. The
// store-reset marker mk is read too, when not "".
func (t *Topology) askNode(ctx context.Context, rdb redis.Cmdable, addr, probe, mk string) (NodeFacts, map[string]bool) {
	var info, cinfo *redis.StringCmd
	var save, mark *redis.MapStringStringCmd
	var pub *redis.IntCmd
	var now *redis.TimeCmd
	sent := time.Now()
	_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		now = p.Time(ctx)
		info = p.Info(ctx, "memory", "persistence", "replication")
		save = p.ConfigGet(ctx, "save")
		pub = p.Publish(ctx, probe, "")
		if t.mode == ModeCluster {
			cinfo = p.ClusterInfo(ctx)
		}
		if mk != "" {
			mark = p.HGetAll(ctx, mk)
		}
		return nil
	})
	if err := info.Err(); err != nil {
		return NodeFacts{Err: err}, nil
	}
	if err := now.Err(); err == nil {
		t.clocks.observe(addr, sent, time.Now(), now.Val())
	}
	fields := parseInfo(info.Val())
	f := NodeFacts{Policy: fields["maxmemory_policy"], Persist: "unknown"}
	if mark != nil {
		f.mark = readMarker(mk, mark, now)
	}
	if err := pub.Err(); err != nil && strings.HasPrefix(err.Error(), "NOPERM") {
		f.Channels = err
	}
	f.Replicas, _ = strconv.Atoi(fields["connected_slaves"])
	switch {
	case fields["aof_enabled"] == "1":
		f.Persist = "aof"
	case save.Err() != nil:
	case save.Val()["save"] != "":
		f.Persist = "rdb"
	default:
		f.Persist = "none"
	}
	switch {
	case f.Policy == "":
		f.Err = errors.New("INFO memory has no maxmemory_policy")
	case fields["role"] != "master":
		// Writes would fail with READONLY: a URL naming a replica, or a
		// Sentinel client not yet told of a failover.
		f.Err = fmt.Errorf("redis is a replica (role %s), not a primary", fields["role"])
	case t.mode == ModeCluster && cinfo.Err() != nil:
		f.Err = cinfo.Err()
	case t.mode == ModeCluster && parseInfo(cinfo.Val())["cluster_state"] != "ok":
		f.Err = fmt.Errorf("cluster_state is %s", parseInfo(cinfo.Val())["cluster_state"])
	}
	online := map[string]bool{}
	for _, r := range replicaLines(fields) {
		if r.state == "online" {
			online[r.addr] = true
		}
	}
	return f, online
}

// readMarker is the marker read by cmd, with the clock read beside it.
func readMarker(key string, cmd *redis.MapStringStringCmd, now *redis.TimeCmd) markerRead {
	r := markerRead{key: key}
	if r.err = now.Err(); r.err != nil {
		return r
	}
	r.now = now.Val().UnixMilli()
	if r.err = cmd.Err(); r.err != nil {
		return r
	}
	r.m, r.err = parseMarker(cmd.Val())
	return r
}

// parseInfo reads the "field:value" lines of an INFO reply.
func parseInfo(info string) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

// replicaLine is one slaveN line of INFO replication: a replica as its
// primary sees it, with the replication offset it last acknowledged.
type replicaLine struct {
	addr   string
	state  string
	offset int64
}

// replicaLines reads the slaveN lines of parsed INFO replication fields,
// in order.
func replicaLines(fields map[string]string) []replicaLine {
	var out []replicaLine
	for i := 0; ; i++ {
		line, ok := fields["slave"+strconv.Itoa(i)]
		if !ok {
			return out
		}
		kv := map[string]string{}
		for _, part := range strings.Split(line, ",") {
			if k, v, ok := strings.Cut(part, "="); ok {
				kv[k] = v
			}
		}
		off, _ := strconv.ParseInt(kv["offset"], 10, 64)
		out = append(out, replicaLine{addr: net.JoinHostPort(kv["ip"], kv["port"]), state: kv["state"], offset: off})
	}
}

// Serving sorts facts into the primaries that serve and those that do not.
func Serving(nodes []NodeFacts) (serving, down []NodeFacts) {
	for _, n := range nodes {
		if n.Err == nil {
			serving = append(serving, n)
		} else {
			down = append(down, n)
		}
	}
	slices.SortFunc(serving, func(a, b NodeFacts) int { return strings.Compare(a.Addr, b.Addr) })
	slices.SortFunc(down, func(a, b NodeFacts) int { return strings.Compare(a.Addr, b.Addr) })
	return serving, down
}
