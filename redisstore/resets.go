package redisstore

// What the health check does with the store-reset markers it read
// (marker.go): a primary that had a marker and answers without it, or
// with another epoch, lost its records, and its keys are held (refused
// with 503 store-reset) until the retention has passed since the reset,
// or an operator acknowledges it (Gate.Ack). The reset is noted in the
// marker itself, so every idemproxy process, also one started after it,
// holds the same keys, and one acknowledgement frees them everywhere.

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// creationGrace is how old other primaries' markers must be before a
// primary without one counts as reset (not as one whose marker another
// process is writing right now, as at the first start of a new store).
const creationGrace = time.Minute

// HeldPrimary is a primary whose keys are refused after a store reset.
type HeldPrimary struct {
	Primary string    `json:"primary"` // "" outside a cluster
	Since   time.Time `json:"since"`   // when the reset was noted (the primary's clock)
	Until   time.Time `json:"until"`   // when the hold ends unless acknowledged first
	Why     string    `json:"why"`
	// Epoch is the marker's now, PreviousEpoch the one the noting
	// process had seen before ("" when it had seen none).
	Epoch         string `json:"epoch"`
	PreviousEpoch string `json:"previous_epoch"`

	key   string            // the marker noting the reset
	reset int64             // its reset field
	slots []redis.SlotRange // cluster: the slots held; nil: every key
}

// markerStore is what the watch needs of the Topology beyond its facts.
type markerStore interface {
	writeMarkers(ctx context.Context, addr string, keys []string, w markerWrite) (map[string]marker, error)
	takeMissingMarkers() []string
}

// resetWatch is the Gate's part that watches the markers.
type resetWatch struct {
	markers   *Markers // nil: no markers, nothing watched
	retention time.Duration
	accept    bool          // --on-store-reset=accept: noted and logged, not held
	grace     time.Duration // creationGrace; tests shorten it
	log       *slog.Logger
	gauges    gateGauges

	// Only the run goroutine touches these.
	seen    map[string]string // marker key -> epoch last read
	created map[string]bool   // markers this process wrote for a new store
	noted   map[string]int64  // primary -> reset logged and counted

	mu    sync.Mutex
	held  map[string]HeldPrimary // by primary address
	acked map[string]int64       // marker key -> reset acknowledged here
}

func newResetWatch(m *Markers, retention time.Duration, accept bool, log *slog.Logger, g gateGauges) *resetWatch {
	return &resetWatch{markers: m, retention: retention, accept: accept, grace: creationGrace, log: log, gauges: g,
		seen: map[string]string{}, created: map[string]bool{}, noted: map[string]int64{},
		held: map[string]HeldPrimary{}, acked: map[string]int64{}}
}

// markerAction is what a read marker calls for.
type markerAction int

const (
	markerKeep   markerAction = iota // as expected: remember its epoch
	markerCreate                     // a new store: write the markers
	markerReset                      // the primary lost its records
)

// decideMarker is what marker m calls for, where seen is the epoch this
// process read there before ("": none), others says other primaries have
// had markers for longer than creationGrace, and created that this process
// wrote this marker for a new store (and could not read it back yet).
// why says why a reset is noted.
func decideMarker(m marker, seen string, others, created bool) (markerAction, string) {
	switch {
	case !m.present && seen != "":
		return markerReset, "its marker is gone"
	case !m.present && others && !created:
		return markerReset, "it has no marker, and other primaries have had theirs for over " + creationGrace.String()
	case !m.present:
		return markerCreate, ""
	case seen != "" && m.epoch != seen && m.reset == 0 && m.was != seen:
		return markerReset, "its marker was written again, with another epoch"
	}
	return markerKeep, ""
}

// check settles every serving primary's marker and updates what is held.
func (w *resetWatch) check(ctx context.Context, ms markerStore, serving []NodeFacts) {
	if w.markers == nil {
		return
	}
	established := map[string]bool{}
	for _, n := range serving {
		if r := n.mark; r.err == nil && r.m.present && r.now-r.m.born >= w.grace.Milliseconds() {
			established[n.Addr] = true
		}
	}
	w.mu.Lock()
	next := maps.Clone(w.held)
	w.mu.Unlock()
	for _, n := range serving {
		if n.mark.key == "" || n.mark.err != nil {
			continue // not read: what was held stays held
		}
		others := len(established) > 1 || len(established) == 1 && !established[n.Addr]
		m, err := w.settle(ctx, ms, n, others)
		if err != nil {
			w.log.Warn("store-reset marker could not be written; trying again at the next check", "primary", primaryName(n.Addr), "error", err)
			continue
		}
		delete(next, n.Addr)
		if h, ok := w.holds(n, m); ok {
			next[n.Addr] = h
		}
	}
	w.repair(ctx, ms, serving)
	w.setHeld(next)
}

// settle acts on n's marker as decideMarker says and returns the marker
// as it is now.
func (w *resetWatch) settle(ctx context.Context, ms markerStore, n NodeFacts, others bool) (marker, error) {
	r := n.mark
	seen := w.seen[r.key]
	action, why := decideMarker(r.m, seen, others, w.created[r.key])
	if action == markerKeep {
		w.seen[r.key] = r.m.epoch
		return r.m, nil
	}
	epoch, err := newEpoch()
	if err != nil {
		return marker{}, err
	}
	// Every slot of the primary gets its marker again (those of a reset
	// primary are gone too), each noting the reset, so that no process's
	// acquire grants a key there until it is acknowledged or its hold ends.
	// The primary's own marker first: the others carry its epoch and the
	// time of its note, so one acknowledgement clears them all.
	write := markerWrite{op: "create", epoch: epoch}
	if action == markerReset && !w.accept {
		write = markerWrite{op: "reset", epoch: epoch, arg: seen, why: why, hold: w.retention.Milliseconds()}
	}
	got, err := ms.writeMarkers(ctx, n.Addr, []string{r.key}, write)
	if err != nil {
		return marker{}, err
	}
	m := got[r.key]
	write.epoch = m.epoch
	if m.reset != 0 {
		write.at = strconv.FormatInt(m.reset, 10)
	}
	rest := slices.DeleteFunc(w.keysOf(n), func(k string) bool { return k == r.key })
	if len(rest) > 0 {
		if _, err := ms.writeMarkers(ctx, n.Addr, rest, write); err != nil {
			return marker{}, err
		}
	}
	w.seen[r.key] = m.epoch
	switch {
	case action == markerCreate:
		w.created[r.key] = true
		w.log.Info("store-reset marker written: a new store, or one that lost everything while no idemproxy process that had read its marker ran (nothing can tell these apart)",
			"primary", primaryName(n.Addr), "epoch", m.epoch)
	case w.accept:
		w.notice(n.Addr, time.Now().UnixMilli())
		w.log.Error("redis primary lost its records (store reset); serving anyway because of --on-store-reset=accept (MAY RUN TWICE: retries of keys completed before the reset run again)",
			"primary", primaryName(n.Addr), "why", why, "previous_epoch", seen, "epoch", m.epoch)
	}
	return m, nil
}

// keysOf are the markers of every slot n serves; outside a cluster (or
// with a hash-tagged prefix), its one marker.
func (w *resetWatch) keysOf(n NodeFacts) []string {
	if !w.markers.perSlot {
		return []string{n.mark.key}
	}
	return w.slotKeys(n.slots)
}

// heldKeys are the markers noting h's reset.
func (w *resetWatch) heldKeys(h HeldPrimary) []string {
	if h.slots == nil {
		return []string{h.key}
	}
	return w.slotKeys(h.slots)
}

// slotKeys are the markers of the slots in ranges.
func (w *resetWatch) slotKeys(ranges []redis.SlotRange) []string {
	var keys []string
	for _, r := range ranges {
		for s := max(r.Start, 0); s <= r.End && s < slotCount; s++ {
			keys = append(keys, w.markers.key(int(s)))
		}
	}
	return keys
}

// holds reports whether m, read on n, holds n's keys, and how.
func (w *resetWatch) holds(n NodeFacts, m marker) (HeldPrimary, bool) {
	end := m.until
	w.mu.Lock()
	acked := w.acked[n.mark.key] == m.reset
	w.mu.Unlock()
	if w.accept || m.reset == 0 || n.mark.now >= end || acked {
		return HeldPrimary{}, false
	}
	h := HeldPrimary{Primary: n.Addr, Since: time.UnixMilli(m.reset), Until: time.Now().Add(time.Duration(end-n.mark.now) * time.Millisecond),
		Why: m.why, Epoch: m.epoch, PreviousEpoch: m.was, key: n.mark.key, reset: m.reset}
	if w.markers.perSlot {
		h.slots = n.slots
	}
	if w.notice(n.Addr, m.reset) {
		w.log.Error("redis primary lost its records (store reset): keyed requests whose keys live there get 503 store-reset, not a fresh run "+
			"(a key completed before the reset would run again), until the hold ends or an operator acknowledges the reset "+
			"(POST /admin/v1/store-resets/ack)",
			"primary", primaryName(n.Addr), "why", h.Why, "since", h.Since, "until", h.Until, "previous_epoch", h.PreviousEpoch, "epoch", h.Epoch)
	}
	return h, true
}

// notice counts the reset of addr noted at reset once; true the first
// time.
func (w *resetWatch) notice(addr string, reset int64) bool {
	if w.noted[addr] == reset {
		return false
	}
	w.noted[addr] = reset
	w.gauges.storeResets.Inc()
	return true
}

// setHeld makes next what is held, and logs each hold that ended.
func (w *resetWatch) setHeld(next map[string]HeldPrimary) {
	var ended []HeldPrimary
	w.mu.Lock()
	for addr, h := range w.held {
		if n, ok := next[addr]; !ok || n.reset != h.reset {
			ended = append(ended, h)
		}
	}
	w.held = next
	held := len(next)
	w.mu.Unlock() // Ack changes w.held (next, from here on) under mu
	w.gauges.heldPrimaries.Set(float64(held))
	for _, h := range ended {
		w.log.Info("store reset hold ended: keys of the primary are served again", "primary", primaryName(h.Primary), "since", h.Since)
	}
}
