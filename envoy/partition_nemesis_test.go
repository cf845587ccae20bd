package envoy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/netlab"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// nemesis is what a shape does to the network. It runs on a goroutine of
// its own while the clients run, so it reports an error instead of failing
// the test, and writes the scene's timeline, which the test reads only
// after it returned.
type nemesis func(ctx context.Context, sc *scene) error

// scene is what a nemesis acts on, and where it records what it did.
type scene struct {
	p *partitionLab
	// cut is the side (0: i1, 1: i2) the seed picked to be cut off.
	cut int
	// keys are the workload's.
	keys []string
	rng  *rand.Rand
	tl   timeline
}

// jitter is up to max, picked by the seed.
func jitter(rng *rand.Rand, max time.Duration) time.Duration {
	return time.Duration(rng.Int64N(int64(max) + 1))
}

// cutFor cuts a from b, waits d and heals, recording both moments.
func cutFor(ctx context.Context, lab *netlab.Lab, a, b []*netlab.Host, d time.Duration, tl *timeline) error {
	return outage(ctx, lab, func() error { return lab.Cut(a, b) }, d, tl)
}

// outage applies cut, waits d and heals everything, recording both
// moments in tl. A heal that fails is reported with the cut's error.
func outage(ctx context.Context, lab *netlab.Lab, cut func() error, d time.Duration, tl *timeline) error {
	if err := cut(); err != nil {
		return errors.Join(err, lab.Heal())
	}
	if tl.cut.IsZero() {
		tl.cut = time.Now()
	}
	waited := sleepUntil(ctx, time.Now().Add(d))
	if err := lab.Heal(); err != nil {
		return err
	}
	tl.healed = time.Now()
	if !waited {
		return ctx.Err()
	}
	return nil
}

// names lists hosts by name: "r1+i1".
func names(hosts []*netlab.Host) string {
	var ns []string
	for _, h := range hosts {
		ns = append(ns, h.Name)
	}
	return strings.Join(ns, "+")
}

// primaryHosts are the hosts of the primaries now, in address order: a
// Sentinel topology's one, as most sentinels name it (in a partition the
// cut-off one may name another), or every cluster primary's.
func primaryHosts(ctx context.Context, p *partitionLab) ([]*netlab.Host, error) {
	var servers []*redistopo.Server
	if p.sentinel != nil {
		named := map[*redistopo.Server]int{}
		for _, s := range p.sentinel.Sentinels {
			if srv, err := p.sentinel.PrimaryOf(ctx, s); err == nil {
				if named[srv]++; named[srv] == 2 {
					servers = append(servers, srv)
				}
			}
		}
	} else {
		var err error
		if servers, err = p.cluster.Primaries(ctx); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(servers, func(a, b *redistopo.Server) int { return strings.Compare(a.Addr, b.Addr) })
	var hosts []*netlab.Host
	for _, s := range servers {
		if h := p.redisHost(s); h != nil {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, errors.New("no primary the sentinels agree on, or none on the lab's hosts")
	}
	return hosts, nil
}

// minority is primary with side s; majority every other Redis host with
// the other side.
func minority(p *partitionLab, s int, primary *netlab.Host) (minor, major []*netlab.Host) {
	for _, h := range p.redis {
		if h != primary {
			major = append(major, h)
		}
	}
	return []*netlab.Host{primary, p.sideHost[s]}, append(major, p.sideHost[1-s])
}

// cutMinority (shapes A and C): a primary (the seed picks one of a
// cluster's) and one side are cut off from the rest for d plus up to a
// second; the majority fails over.
func cutMinority(d time.Duration) nemesis {
	return func(ctx context.Context, sc *scene) error {
		primaries, err := primaryHosts(ctx, sc.p)
		if err != nil {
			return err
		}
		minor, major := minority(sc.p, sc.cut, primaries[sc.rng.IntN(len(primaries))])
		long := d + jitter(sc.rng, time.Second)
		sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("cut %s|%s %v", names(minor), names(major), long.Round(time.Millisecond)))
		return cutFor(ctx, sc.p.lab, minor, major, long, &sc.tl)
	}
}

// flapMinority (shapes B and E): a primary and one side cut off, on for 1
// to 2 s and off for 1 to 1.5 s (the seed picks), n times. The cut
// follows the primary: once a replica took over, the next cut is its.
// Some cuts outlast failure detection and election (about 1.5 to 2 s on
// these settings), some do not. With on-times of 1 to 1.5 s, a fixed
// cut, a failover rarely completed within one: on Cluster with
// --redis-min-replicas 0, 1 run of 9 (300 keys) ran a key twice.
func flapMinority(n int) nemesis {
	return func(ctx context.Context, sc *scene) error {
		primaries, err := primaryHosts(ctx, sc.p)
		if err != nil {
			return err
		}
		primary := primaries[sc.rng.IntN(len(primaries))]
		for i := range n {
			minor, major := minority(sc.p, sc.cut, primary)
			on, off := time.Second+jitter(sc.rng, time.Second), time.Second+jitter(sc.rng, 500*time.Millisecond)
			if i == 0 {
				sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("flap %s|%s", names(minor), names(major)))
			}
			sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("%s %v/%v", primary.Name, on.Round(time.Millisecond), off.Round(time.Millisecond)))
			if err := cutFor(ctx, sc.p.lab, minor, major, on, &sc.tl); err != nil {
				return err
			}
			if !sleepUntil(ctx, time.Now().Add(off)) {
				return ctx.Err()
			}
			primary, primaries = successor(ctx, sc.p, primary, primaries)
		}
		return nil
	}
}

// successor is the primary that took over from primary, which was one of
// before: the new one among the primaries now; primary itself while it
// still is one, or when the topology cannot say. It returns the
// primaries now too.
func successor(ctx context.Context, p *partitionLab, primary *netlab.Host, before []*netlab.Host) (*netlab.Host, []*netlab.Host) {
	now, err := primaryHosts(ctx, p)
	if err != nil {
		return primary, before
	}
	if !slices.Contains(now, primary) {
		for _, h := range now {
			if !slices.Contains(before, h) {
				return h, now
			}
		}
	}
	return primary, now
}

// cutSideFromRedis (shape D): once the workload's slow requests are
// running at the backend, the side they went through loses every Redis
// node for d; the clients' retries through it meet no Redis while the
// first requests are still upstream.
func cutSideFromRedis(d time.Duration) nemesis {
	return func(ctx context.Context, sc *scene) error {
		err := testenv.Poll(ctx, 20*time.Second, func(ctx context.Context) error {
			n, err := keysExecuted(ctx, sc.p, sc.keys)
			if err == nil && n < len(sc.keys) {
				err = fmt.Errorf("%d of %d slow requests at the backend", n, len(sc.keys))
			}
			return err
		})
		if err != nil {
			return err
		}
		h := sc.p.sideHost[sc.cut]
		sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("cut %s|redis %v", h.Name, d))
		return cutFor(ctx, sc.p.lab, []*netlab.Host{h}, sc.p.redis, d, &sc.tl)
	}
}

// cutReplication (shape F): the Redis hosts lose each other's data port
// (replication, and the sentinels' links to the other hosts' servers) for
// d plus up to a second; sentinels still talk to each other, idemproxy
// still reaches every server.
func cutReplication(d time.Duration, port int) nemesis {
	return func(ctx context.Context, sc *scene) error {
		long, redis := d+jitter(sc.rng, time.Second), sc.p.redis
		sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("cut port %d between %s %v", port, names(redis), long.Round(time.Millisecond)))
		return outage(ctx, sc.p.lab, func() error {
			for i, h := range redis[:len(redis)-1] {
				if err := sc.p.lab.CutPorts([]*netlab.Host{h}, redis[i+1:], port); err != nil {
					return err
				}
			}
			return nil
		}, long, &sc.tl)
	}
}

// keysExecuted is how many of keys the backend ran so far.
func keysExecuted(ctx context.Context, p *partitionLab, keys []string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.backendURL()+"/stats", nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st backendStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		if st.Keys[k] > 0 {
			n++
		}
	}
	return n, nil
}
