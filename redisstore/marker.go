package redisstore

// Store-reset markers. A Redis that restarts without persistence, is
// flushed, fails over to a replica that never had the data, or is restored
// from an old snapshot comes back without the records of completed keys,
// and their retries would run again. So idemproxy keeps a marker on every
// primary: a hash with no TTL under the key prefix, with a random epoch.
// The health check reads each primary's marker with its other facts
// (resets.go decides, and notes a reset in every marker of the primary);
// the acquire script checks that the marker of its record's slot exists
// and notes no reset before it grants a free key, so a request never runs
// on a store that lost its memory, even before the next health check, and
// no process grants one while another has noted the reset.
//
// Outside a cluster there is one marker. On a cluster there is one per
// slot, because a script may only touch keys of one slot: the acquire
// script reads the marker beside its record, and resharding moves each
// marker with its slot. The health check reads one per primary, that of
// the lowest slot it serves.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// markerName follows the key prefix in every marker's key.
const markerName = "store-marker"

// Markers names the store-reset markers of one key prefix. Give the same
// Markers to the Store (Options.Markers: acquires check them) and to the
// Gate (GateOptions.Markers: the health check reads and writes them).
type Markers struct {
	prefix  string
	perSlot bool
	tags    [slotCount]string // perSlot only
}

// NewMarkers names the markers of prefix on a Redis of mode. On a cluster
// there is one per slot, unless the prefix has a hash tag of its own
// (then every key of the store, markers included, lives in one slot).
func NewMarkers(prefix string, mode Mode) (*Markers, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	m := &Markers{prefix: prefix}
	if mode == ModeCluster && !hasHashTag(prefix+markerName) {
		tags, err := slotTags()
		if err != nil {
			return nil, err
		}
		m.perSlot, m.tags = true, tags
	}
	return m, nil
}

// hasHashTag reports whether key has a non-empty "{...}".
func hasHashTag(key string) bool {
	open := strings.IndexByte(key, '{')
	return open >= 0 && strings.IndexByte(key[open+1:], '}') > 0
}

// key is the marker of slot; outside a cluster, the only one.
func (m *Markers) key(slot int) string {
	if !m.perSlot {
		return m.prefix + markerName
	}
	return m.prefix + markerName + "{" + m.tags[slot] + "}"
}

// forRecord is the marker in the slot of the Redis key rk.
func (m *Markers) forRecord(rk string) string {
	if !m.perSlot {
		return m.key(0)
	}
	return m.key(keySlot(rk))
}

// slots is how many markers there are: slotCount, or 1.
func (m *Markers) slots() int {
	if m.perSlot {
		return slotCount
	}
	return 1
}

// isMarker reports whether rk is one of the markers: listings of records
// must skip them.
func (m *Markers) isMarker(rk string) bool {
	return strings.HasPrefix(rk, m.prefix+markerName)
}

// newEpoch is a marker's random id: 64 bits from crypto/rand.
func newEpoch() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("redisstore: marker epoch: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// marker is a marker as read: its fields (marker.lua lists them), or
// present false when the key does not exist.
type marker struct {
	present bool
	epoch   string
	born    int64 // ms, the primary's clock
	reset   int64 // ms; 0: no reset outstanding
	until   int64 // ms: when the outstanding reset stops holding
	why     string
	was     string
	acked   int64
}

// parseMarker reads a marker's fields, from HGETALL or marker.lua.
func parseMarker(f map[string]string) (marker, error) {
	if len(f) == 0 {
		return marker{}, nil
	}
	m := marker{present: true, epoch: f["epoch"], why: f["why"], was: f["was"]}
	if m.epoch == "" {
		return marker{}, fmt.Errorf("%w: store marker without epoch", ErrCorruptRecord)
	}
	for name, dst := range map[string]*int64{"born": &m.born, "reset": &m.reset, "until": &m.until, "acked": &m.acked} {
		v, ok := f[name]
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return marker{}, fmt.Errorf("%w: store marker field %s: %q", ErrCorruptRecord, name, v)
		}
		*dst = n
	}
	return m, nil
}

// flatToMap turns a flat HGETALL-style reply into a map.
func flatToMap(reply []any) map[string]string {
	out := make(map[string]string, len(reply)/2)
	for i := 0; i+1 < len(reply); i += 2 {
		out[fmt.Sprint(reply[i])] = fmt.Sprint(reply[i+1])
	}
	return out
}
