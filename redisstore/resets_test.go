package redisstore

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// resetProcess is what one idemproxy process has of a store: its store
// (acquires check the markers) and its gate, checked by the test.
type resetProcess struct {
	store *Store
	gate  *Gate
	logs  *testenv.Buffer
}

// newResetProcess is a process on topo with markers m, holding a reset
// for retention; accept is --on-store-reset=accept (its acquires do not
// check markers).
func newResetProcess(t *testing.T, topo *Topology, m *Markers, retention time.Duration, accept bool) *resetProcess {
	t.Helper()
	logs := &testenv.Buffer{}
	gate, err := NewGate(topo, GateOptions{Interval: time.Hour, Timeout: 2 * time.Second, Prefix: DefaultPrefix,
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Markers: m, Retention: retention, AcceptResets: accept})
	require.NoError(t, err)
	gate.resets.grace = 0 // markers count as established at once
	sm := m
	if accept {
		sm = nil
	}
	return &resetProcess{store: New(topo.Client(), Options{Topology: topo, Markers: sm}), gate: gate, logs: logs}
}

func connectTopo(t *testing.T, mode Mode, url string) *Topology {
	t.Helper()
	topo, err := Connect(ConnectOptions{Mode: mode, URL: url, Timeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	return topo
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// complete stores a response for key, as a request that ran would.
func (p *resetProcess) complete(t *testing.T, key string) {
	t.Helper()
	acq, err := p.store.Acquire(t.Context(), key, claim("tok-"+key, []byte("fp"), time.Minute))
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State)
	require.NoError(t, p.store.Complete(t.Context(), key, "tok-"+key, idem.Record{Fingerprint: []byte("fp"), Status: 201, Body: []byte("charged")}, time.Hour))
}

// retry is what a retry of key finds: the store's state, or its error.
func (p *resetProcess) retry(t *testing.T, key string) (idem.State, error) {
	t.Helper()
	acq, err := p.store.Acquire(t.Context(), key, claim("retry-"+key, []byte("fp"), time.Minute))
	return acq.State, err
}

// TestStoreReset_standalone: a Redis restarted empty (no persistence)
// never lets a completed key run again: the retry is refused at once (the
// acquire finds no marker), the gate holds the primary, a process started
// after the reset holds it too, and an acknowledgement releases it
// everywhere. A fresh store at first start is not a reset.
func TestStoreReset_standalone(t *testing.T) {
	rs, topo, m := standaloneMarked(t)
	a := newResetProcess(t, topo, m, time.Hour, false)

	_, err := a.retry(t, "before-check")
	require.ErrorIs(t, err, idem.ErrStoreReset, "no marker read yet: nothing is granted")
	a.gate.check(t.Context())
	require.NoError(t, a.gate.Usable("k"))
	require.Contains(t, a.logs.String(), "store-reset marker written: a new store")
	require.Zero(t, counterValue(a.gate.gauges.storeResets), "a new store is no reset")
	size, err := rs.Client(t).MemoryUsage(t.Context(), m.key(0)).Result()
	require.NoError(t, err)
	t.Logf("figures: the marker takes %d bytes (MEMORY USAGE)", size)
	require.Less(t, size, int64(200))

	a.complete(t, "k")
	state, err := a.retry(t, "k")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, state, "replayed before the restart")

	rs.Restart(t)
	state, err = a.retry(t, "k")
	require.ErrorIs(t, err, idem.ErrStoreReset, "refused before any health check: got %v", state)
	require.ErrorIs(t, err, ErrResetMarker)

	a.gate.check(t.Context())
	require.ErrorIs(t, a.gate.Usable("k"), idem.ErrStoreReset)
	require.ErrorIs(t, a.gate.Usable("any other key"), idem.ErrStoreReset, "the whole primary is held")
	a.gate.check(t.Context())
	require.Equal(t, 1.0, counterValue(a.gate.gauges.storeResets))
	require.Equal(t, 1.0, gaugeValue(a.gate.gauges.heldPrimaries))
	require.Equal(t, 1, strings.Count(a.logs.String(), "redis primary lost its records"), "logged once")
	require.Contains(t, a.logs.String(), `"why":"its marker is gone"`)
	held := a.gate.StoreResets()
	require.Len(t, held, 1)
	require.WithinDuration(t, time.Now().Add(time.Hour), held[0].Until, time.Minute)

	_, err = a.retry(t, "k")
	require.ErrorIs(t, err, idem.ErrStoreReset, "the rewritten marker notes the reset: no process's acquire grants the key")
	b := newResetProcess(t, topo, m, time.Hour, false)
	b.gate.check(t.Context())
	require.ErrorIs(t, b.gate.Usable("k"), idem.ErrStoreReset, "a process started after the reset holds it too")

	acked, err := a.gate.AckStoreResets(t.Context())
	require.NoError(t, err)
	require.Len(t, acked, 1)
	require.NoError(t, a.gate.Usable("k"))
	require.Zero(t, gaugeValue(a.gate.gauges.heldPrimaries))
	b.gate.check(t.Context())
	require.NoError(t, b.gate.Usable("k"), "acknowledged once, released everywhere")
	a.gate.check(t.Context())
	require.NoError(t, a.gate.Usable("k"), "not held again by a check after the acknowledgement")
	state, err = a.retry(t, "k")
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, state, "after the acknowledgement the key runs (the operator's decision)")
	require.Equal(t, 1.0, counterValue(a.gate.gauges.storeResets))
}

// TestStoreReset_flushAndEpoch: FLUSHALL is a reset, also when a process
// started after it wrote a new marker, taking the store for a new one: a
// process that read the old epoch notes the reset in the new marker, and
// the new process then holds too.
func TestStoreReset_flushAndEpoch(t *testing.T) {
	rs, topo, m := standaloneMarked(t)
	old := newResetProcess(t, topo, m, time.Hour, false)
	old.gate.check(t.Context())
	old.complete(t, "k")

	require.NoError(t, rs.Client(t).FlushAll(t.Context()).Err())
	fresh := newResetProcess(t, topo, m, time.Hour, false)
	fresh.gate.check(t.Context())
	require.NoError(t, fresh.gate.Usable("k"), "nothing tells a new process that this store was wiped")
	require.Contains(t, fresh.logs.String(), "nothing can tell these apart")

	old.gate.check(t.Context())
	require.ErrorIs(t, old.gate.Usable("k"), idem.ErrStoreReset)
	require.Contains(t, old.logs.String(), "written again, with another epoch")
	fresh.gate.check(t.Context())
	require.ErrorIs(t, fresh.gate.Usable("k"), idem.ErrStoreReset, "the note in the marker holds every process")
}

// TestStoreReset_retentionEnds: the hold ends by itself when the
// retention has passed since the reset.
func TestStoreReset_retentionEnds(t *testing.T) {
	rs, topo, m := standaloneMarked(t)
	p := newResetProcess(t, topo, m, 300*time.Millisecond, false)
	p.gate.check(t.Context())
	require.NoError(t, rs.Client(t).FlushAll(t.Context()).Err())
	p.gate.check(t.Context())
	require.ErrorIs(t, p.gate.Usable("k"), idem.ErrStoreReset)
	require.Eventually(t, func() bool {
		p.gate.check(context.Background())
		return p.gate.Usable("k") == nil
	}, 10*time.Second, 50*time.Millisecond)
	require.Contains(t, p.logs.String(), "store reset hold ended")
	state, err := p.retry(t, "k")
	require.NoError(t, err, "the note's hold ended too")
	require.Equal(t, idem.StateAcquired, state)
}

// TestStoreReset_accept: --on-store-reset=accept notes and logs the reset
// (MAY RUN TWICE) but holds nothing, and its acquires grant the key again:
// the double execution the default prevents.
func TestStoreReset_accept(t *testing.T) {
	rs, topo, m := standaloneMarked(t)
	p := newResetProcess(t, topo, m, time.Hour, true)
	p.gate.check(t.Context())
	p.complete(t, "k")
	rs.Restart(t)
	state, err := p.retry(t, "k")
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, state, "accept: the completed key runs a second time")
	p.gate.check(t.Context())
	require.NoError(t, p.gate.Usable("k"))
	require.Equal(t, 1.0, counterValue(p.gate.gauges.storeResets))
	require.Contains(t, p.logs.String(), "MAY RUN TWICE")
}

// TestStoreReset_upgrade: records written by a store that knew no markers
// (the previous version) keep working once a new process has written the
// marker: the first new process takes the store for a new one, and the old
// records replay.
func TestStoreReset_upgrade(t *testing.T) {
	rs := redistopo.Start(t)
	topo := connectTopo(t, ModeStandalone, rs.URL())
	old := &resetProcess{store: New(topo.Client(), Options{Topology: topo})}
	old.complete(t, "before-upgrade")

	m, err := NewMarkers(DefaultPrefix, ModeStandalone)
	require.NoError(t, err)
	p := newResetProcess(t, topo, m, time.Hour, false)
	p.gate.check(t.Context())
	require.NoError(t, p.gate.Usable("before-upgrade"))
	require.Zero(t, counterValue(p.gate.gauges.storeResets))
	state, err := p.retry(t, "before-upgrade")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, state, "the old record replays")
	state, err = old.retry(t, "new-key")
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, state, "a process of the previous version keeps working beside the marker")
}

// standaloneMarked is a fresh standalone Redis, a topology on it and the
// markers of the default prefix.
func standaloneMarked(t *testing.T) (*redistopo.Server, *Topology, *Markers) {
	t.Helper()
	rs := redistopo.Start(t)
	topo := connectTopo(t, ModeStandalone, rs.URL())
	m, err := NewMarkers(DefaultPrefix, ModeStandalone)
	require.NoError(t, err)
	return rs, topo, m
}
