package envoy

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// The network-partition suite (issue 18). Real Redis (Sentinel or
// Cluster), two idemproxy+Envoy sides, the counting backend and the
// clients each on hosts of their own; a seeded nemesis cuts the network
// between them while every key is sent and retried through both sides;
// the checker reads the backend's executions and the clients' history.
//
// PARTITIONS=long (make partitions) runs every shape, each with the
// shipped defaults and with a weaker setting that may run a key twice,
// with 300 keys, for PARTITION_SEEDS seeds (default 3) from PARTITION_SEED
// on. Otherwise (make test) the short schedule runs: shape B with the
// defaults and A's weak setting on Sentinel, shape C with the defaults on
// Cluster, 60 keys. PARTITION_SEED (an unsigned integer) repeats a run's
// choices; without it the seed is random and logged. PARTITION_KEYS sets
// the number of keys (shape D always has its 30). Nothing is skipped but
// under -short, like every test that needs real binaries.

// shape is one kind of partition, and how to load it.
type shape struct {
	name, mode string
	nemesis    nemesis
	// before is how long the clients run before the nemesis starts; span
	// about how long the nemesis lasts, to spread the keys over.
	before, span time.Duration
	// path is the request; keys, if set, replaces the schedule's count;
	// fromCut sends every key first through the side to be cut, all at
	// once (shape D: slow requests upstream on it when it is cut).
	path    string
	keys    int
	fromCut bool
	// weak is a setting that may run a key twice in this shape.
	weak []string
	// healthyReady asserts that the side not cut off is ready through
	// the second half of the partition.
	healthyReady bool
	// short says which of the shape's runs the short schedule has.
	short struct{ defaults, weak bool }
}

// partitionShapes are the shapes A to F of issue 18. The weak settings:
// with --redis-min-replicas 0 a lock or response the cut-off primary took
// is gone once a replica is promoted; --fail-open lets retries through a
// side without Redis run again. (With 1, a flap's failover can promote the
// replica that did not acknowledge: it ran keys twice in 2 of 6 rounds of
// 300 keys, too seldom to be the shape's proof; see docs/reliability.md.)
//
// The defaults wait for every replica that may be promoted: no key runs
// twice, none is held that never ran, no response a client saw is lost.
func partitionShapes() []shape {
	minReplicas := func(n int) []string { return []string{"--redis-min-replicas", strconv.Itoa(n)} }
	shapes := []shape{
		// A: the primary and one side cut off for 10 s; the majority
		// fails over.
		{name: "A-minority", mode: "sentinel", nemesis: cutMinority(10 * time.Second), span: 11 * time.Second, weak: minReplicas(0)},
		// B: the same cut, on for 1 to 2 s and off for 1 to 1.5 s, five
		// times.
		{name: "B-flap", mode: "sentinel", nemesis: flapMinority(5), span: 15 * time.Second, weak: minReplicas(1)},
		// F: the Redis hosts lose each other's data port for 10 s
		// (replication, and the sentinels' view of each other's servers);
		// the sentinels still talk, and fail over, again and again.
		{name: "F-replication", mode: "sentinel", nemesis: cutReplication(10*time.Second, 6379), span: 11 * time.Second, weak: minReplicas(0)},
		// C: a cluster primary and one side cut off for 10 s.
		{name: "C-minority", mode: "cluster", nemesis: cutMinority(10 * time.Second), span: 11 * time.Second, weak: minReplicas(0),
			healthyReady: true},
		// D: one side loses every Redis node for 6 s while 30 slow
		// requests it forwarded are upstream.
		{name: "D-side-cut", mode: "cluster", nemesis: cutSideFromRedis(6 * time.Second), span: 6 * time.Second,
			path: "/slow?delay=3s", keys: 30, fromCut: true, weak: []string{"--fail-open"}},
		// E: C's cut flapping as B's.
		{name: "E-flap", mode: "cluster", nemesis: flapMinority(5), span: 15 * time.Second, weak: minReplicas(0)},
	}
	for i := range shapes {
		sh := &shapes[i]
		if sh.path == "" {
			sh.path, sh.before = "/charge", 2*time.Second
		}
		switch sh.name {
		case "A-minority":
			sh.short.weak = true
		case "B-flap", "C-minority":
			sh.short.defaults = true
		}
	}
	return shapes
}

// schedule is what this run covers: PARTITIONS, PARTITION_SEED(S).
type schedule struct {
	long  bool
	seed  uint64
	seeds int
	keys  int
	// deadline bounds each key's clients; rounds, the tries of a weak
	// setting to show a double execution.
	deadline time.Duration
	rounds   int
}

func readSchedule(t *testing.T) schedule {
	t.Helper()
	sc := schedule{seed: rand.Uint64() >> 1, seeds: 1, keys: 60, deadline: 20 * time.Second, rounds: 2}
	if os.Getenv("PARTITIONS") == "long" {
		sc = schedule{long: true, seed: sc.seed, seeds: 3, keys: 300, deadline: 45 * time.Second, rounds: 4}
		if v := os.Getenv("PARTITION_SEEDS"); v != "" {
			n, err := strconv.Atoi(v)
			require.NoError(t, err, "PARTITION_SEEDS")
			sc.seeds = n
		}
	}
	if v := os.Getenv("PARTITION_KEYS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "PARTITION_KEYS")
		sc.keys = n
	}
	if v := os.Getenv("PARTITION_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "PARTITION_SEED")
		sc.seed = n
	}
	require.Positive(t, sc.seeds, "PARTITION_SEEDS: at least one seed")
	require.GreaterOrEqual(t, sc.keys, 2, "PARTITION_KEYS: at least two keys")
	t.Logf("partition schedule: long=%v seed=%d seeds=%d keys=%d (PARTITION_SEED=%d repeats it)", sc.long, sc.seed, sc.seeds, sc.keys, sc.seed)
	return sc
}

func TestPartition_Sentinel(t *testing.T) { runPartitions(t, "sentinel") }

func TestPartition_Cluster(t *testing.T) { runPartitions(t, "cluster") }

// runPartitions runs the schedule's shapes of one topology on one lab.
func runPartitions(t *testing.T, mode string) {
	testenv.NeedsBinaries(t)
	sc := readSchedule(t)
	p := newPartitionLab(t, mode)
	for _, sh := range partitionShapes() {
		if sh.mode != mode {
			continue
		}
		for s := range uint64(sc.seeds) {
			seed := sc.seed + s
			if sc.long || sh.short.defaults {
				t.Run(fmt.Sprintf("%s defaults seed %d", sh.name, seed), func(t *testing.T) {
					v := runScenario(t, p, sh, sc, nil, seed)
					require.Empty(t, v.ranTwice, "no key ran twice")
					require.Empty(t, v.mismatched, "every replay is the execution's response")
					require.Zero(t, v.heldUnrun, "no key is held that never ran")
					require.Empty(t, v.lost, "no response a client saw is lost")
					if sh.healthyReady {
						require.Zero(t, v.lateNotReady, "the side not cut off stays ready once the cut primary was replaced")
					}
				})
			}
			if sc.long || sh.short.weak {
				t.Run(fmt.Sprintf("%s %s seed %d", sh.name, strings.Join(sh.weak, " "), seed), func(t *testing.T) {
					runWeak(t, p, sh, sc, seed)
				})
			}
		}
	}
}

// runWeak runs a shape with its weak setting, up to sc.rounds times (each
// with a seed of its own) until a key ran twice, and requires that one
// did: the checker catches what the setting allows.
func runWeak(t *testing.T, p *partitionLab, sh shape, sc schedule, seed uint64) {
	for round := range uint64(sc.rounds) {
		twice := false
		t.Run(fmt.Sprintf("round %d", round+1), func(t *testing.T) {
			twice = len(runScenario(t, p, sh, sc, sh.weak, seed+round<<32).ranTwice) > 0
		})
		if twice {
			return
		}
	}
	t.Fatalf("%s with %v ran no key twice in %d rounds: the checker saw nothing to catch", sh.name, sh.weak, sc.rounds)
}

// runScenario starts both sides with args, runs the workload while the
// nemesis acts, heals, takes the final look, and checks and logs it all.
func runScenario(t *testing.T, p *partitionLab, sh shape, sc schedule, args []string, seed uint64) verdict {
	p.waitHealthy(t)
	sides := p.startSides(t, args)
	warmUp(t, p, sides)
	rng := seeded(seed, 1)
	cut := rng.IntN(2)
	w := workload{path: sh.path, spread: sh.before + sh.span + 2*time.Second, deadline: sc.deadline, pace: 250 * time.Millisecond}
	if sh.fromCut {
		w.spread, w.firstSide = 0, &cut
	}
	for range cmp.Or(sh.keys, sc.keys) {
		w.keys = append(w.keys, newKey(t))
	}
	promotions := p.promotions()
	sn := &scene{p: p, cut: cut, keys: w.keys, rng: seeded(seed, 2)}
	nemesisDone := make(chan error, 1)
	go func() {
		if !sleepUntil(t.Context(), time.Now().Add(sh.before)) {
			nemesisDone <- t.Context().Err()
			return
		}
		nemesisDone <- sh.nemesis(t.Context(), sn)
	}()
	healthy := sampleReadiness(t.Context(), sides[1-cut])
	history := w.run(t.Context(), sides, p.http, seeded(seed, 3))
	require.NoError(t, testenv.Receive(t, nemesisDone, 2*time.Minute, "the nemesis"), "nemesis %v", sn.tl.steps)
	healthy.end()
	tl := sn.tl
	// The last half of the partition: any failover is over by then.
	lateCut := tl.cut.Add(tl.healed.Sub(tl.cut) / 2)
	require.NoError(t, p.lab.Heal())
	p.waitHealthy(t)
	final := finalLook(t.Context(), sides, p.http, w.path, w.keys, 5*time.Second)
	v := check(w.keys, append(history, final...), p.executions(t), tl)
	setting := "defaults"
	if len(args) > 0 {
		setting = strings.Join(args, " ")
	}
	logFigures(t, "partition-"+p.mode+"-"+sh.name, append([]any{"setting", fmt.Sprintf("%q", setting), "seed", seed,
		"cut_side", sides[cut].name, "nemesis", fmt.Sprintf("%q", strings.Join(tl.steps, " ")),
		"promotions", p.promotions() - promotions, "partition_s", tl.healed.Sub(tl.cut).Round(100 * time.Millisecond).Seconds(),
		"healthy_side_not_ready", healthy.figure(tl.cut, tl.healed), "healthy_side_not_ready_late", healthy.figure(lateCut, tl.healed)},
		v.figures()...)...)
	require.NotZero(t, v.executedKeys, "the workload ran")
	v.lateNotReady, _ = healthy.notReady(lateCut, tl.healed)
	for _, st := range v.stories {
		t.Log(st)
	}
	return v
}

// seeded is random stream number stream of seed: ChaCha8, so that nearby
// seeds (1, 2, 3) choose independently, which PCG's first numbers do not
// (seeds 1 to 3 all cut i1 with it).
func seeded(seed, stream uint64) *rand.Rand {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:8], seed)
	binary.LittleEndian.PutUint64(key[8:16], stream)
	return rand.New(rand.NewChaCha8(key))
}

// warmUp charges a key through each side until it is answered 200: both
// sides reach Redis and the backend before the scenario starts.
func warmUp(t *testing.T, p *partitionLab, sides [2]*side) {
	t.Helper()
	for _, s := range sides {
		k := newKey(t)
		testenv.WaitFor(t, 30*time.Second, "a charge through "+s.name, func() bool {
			return sendAttempt(t.Context(), p.http, s.url+"/charge", k).status == http.StatusOK
		})
	}
}
