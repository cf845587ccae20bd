package redisstore

// What the Gate answers and does about held primaries: whether a key is
// held, the list, an operator's acknowledgement, and the repair of a slot
// marker acquires found missing on a primary that kept its own.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// refuses is idem.ErrStoreReset, wrapped with what holds it, when the
// key whose slot slotOf gives is held. slotOf (a hash of the key) runs
// only when a held primary serves some slots only: on every keyed
// request, nothing is held.
func (w *resetWatch) refuses(slotOf func() int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	slot := -1
	for _, h := range w.held {
		if h.slots != nil && slot < 0 {
			slot = slotOf()
		}
		if h.slots == nil || inRanges(slot, h.slots) {
			return fmt.Errorf("%w: %s lost its records at %s (%s); held until %s unless acknowledged",
				idem.ErrStoreReset, primaryName(h.Primary), h.Since.UTC().Format(time.RFC3339), h.Why, h.Until.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// inRanges reports whether slot is in one of ranges.
func inRanges(slot int, ranges []redis.SlotRange) bool {
	return slices.ContainsFunc(ranges, func(r redis.SlotRange) bool { return int64(slot) >= r.Start && int64(slot) <= r.End })
}

// heldNow lists what is held, by primary.
func (w *resetWatch) heldNow() []HeldPrimary {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := slices.Collect(maps.Values(w.held))
	slices.SortFunc(out, func(a, b HeldPrimary) int { return strings.Compare(a.Primary, b.Primary) })
	return out
}

// ack acknowledges every held reset: its note is removed from the marker,
// so every process serves the primary's keys again at its next check, and
// this one at once. It returns what it released.
func (w *resetWatch) ack(ctx context.Context, ms markerStore) ([]HeldPrimary, error) {
	var done []HeldPrimary
	for _, h := range w.heldNow() {
		_, err := ms.writeMarkers(ctx, h.Primary, w.heldKeys(h), markerWrite{op: "ack", arg: strconv.FormatInt(h.reset, 10)})
		if err != nil {
			return done, err
		}
		w.mu.Lock()
		w.acked[h.key] = h.reset
		if w.held[h.Primary].reset == h.reset {
			delete(w.held, h.Primary)
		}
		n := len(w.held)
		w.mu.Unlock()
		w.gauges.heldPrimaries.Set(float64(n))
		w.log.Warn("store reset acknowledged by an operator: keys of the primary are served again, and a key completed before the reset runs again if retried",
			"primary", primaryName(h.Primary), "since", h.Since)
		done = append(done, h)
	}
	return done, nil
}

// repair writes again the markers acquires found missing in slots whose
// primary still has its own (read this check, noting no reset): a process that
// stopped while it wrote a new store's markers, or a marker deleted by
// hand. A primary that lost its records lost its own marker too, and is
// held by check instead.
func (w *resetWatch) repair(ctx context.Context, ms markerStore, serving []NodeFacts) {
	for _, key := range ms.takeMissingMarkers() {
		slot := keySlot(key)
		for _, n := range serving {
			r := n.mark
			if r.key == "" || r.err != nil || !r.m.present || r.m.reset != 0 || key == r.key || (w.markers.perSlot && !inRanges(slot, n.slots)) {
				continue
			}
			if _, err := ms.writeMarkers(ctx, n.Addr, []string{key}, markerWrite{op: "create", epoch: w.seen[r.key]}); err != nil {
				w.log.Warn("a missing store-reset marker could not be written again", "primary", primaryName(n.Addr), "slot", slot, "error", err)
				continue
			}
			w.log.Warn("the store-reset marker of one slot was missing while its primary's own was there: written again "+
				"(a process stopped while it wrote a new store's markers, or markers were deleted by hand)",
				"primary", primaryName(n.Addr), "slot", slot)
		}
	}
}
