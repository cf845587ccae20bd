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

// minority is a primary (a Sentinel topology's, or the one of a cluster's
// the seed picked) with side s; majority is every other Redis host with
// the other side.
func minority(ctx context.Context, p *partitionLab, s int, rng *rand.Rand) (minor, major []*netlab.Host, err error) {
	var primary *netlab.Host
	if p.sentinel != nil {
		s, err := p.sentinel.Primary(ctx)
		if err != nil {
			return nil, nil, err
		}
		primary = p.redisHost(s)
	} else {
		ps, err := p.cluster.Primaries(ctx)
		if err != nil {
			return nil, nil, err
		}
		// In address order, so that a seed picks the same one again.
		slices.SortFunc(ps, func(a, b *redistopo.Server) int { return strings.Compare(a.Addr, b.Addr) })
		primary = p.redisHost(ps[rng.IntN(len(ps))])
	}
	if primary == nil {
		return nil, nil, errors.New("the primary is on none of the lab's hosts")
	}
	minor = []*netlab.Host{primary, p.sideHost[s]}
	for _, h := range p.redis {
		if h != primary {
			major = append(major, h)
		}
	}
	return minor, append(major, p.sideHost[1-s]), nil
}

// cutMinority (shapes A and C): a primary and one side are cut off from
// the rest for d plus up to a second; the majority fails over.
func cutMinority(d time.Duration) nemesis {
	return func(ctx context.Context, sc *scene) error {
		minor, major, err := minority(ctx, sc.p, sc.cut, sc.rng)
		if err != nil {
			return err
		}
		long := d + jitter(sc.rng, time.Second)
		sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("cut %s|%s %v", names(minor), names(major), long.Round(time.Millisecond)))
		return cutFor(ctx, sc.p.lab, minor, major, long, &sc.tl)
	}
}

// flapMinority (shapes B and E): the same cut, on for 1 to 2 s and off
// for 1 to 1.5 s (the seed picks), n times. Some cuts outlast failure
// detection and election (about 1.5 to 2 s on these settings), some do
// not. With on-times of 1 to 1.5 s a failover rarely completed within a
// cut: on Cluster with --redis-min-replicas 0, 1 run of 9 (300 keys) ran
// a key twice; with 1 to 2 s, 3 of 5.
func flapMinority(n int) nemesis {
	return func(ctx context.Context, sc *scene) error {
		minor, major, err := minority(ctx, sc.p, sc.cut, sc.rng)
		if err != nil {
			return err
		}
		sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("flap %s|%s", names(minor), names(major)))
		for range n {
			on, off := time.Second+jitter(sc.rng, time.Second), time.Second+jitter(sc.rng, 500*time.Millisecond)
			sc.tl.steps = append(sc.tl.steps, fmt.Sprintf("%v/%v", on.Round(time.Millisecond), off.Round(time.Millisecond)))
			if err := cutFor(ctx, sc.p.lab, minor, major, on, &sc.tl); err != nil {
				return err
			}
			if !sleepUntil(ctx, time.Now().Add(off)) {
				return ctx.Err()
			}
		}
		return nil
	}
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
