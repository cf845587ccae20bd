package redisstore

// The Topology's part in the store-reset markers: writing them on one
// primary, and the keys whose markers acquires found missing, for the
// health check to look at.

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// maxMissing bounds the missing markers kept between two checks: one per
// slot at most, and a few suffice to find what is wrong.
const maxMissing = 64

// noteMissingMarker records that an acquire found marker key missing, and
// asks the health check to run now.
func (t *Topology) noteMissingMarker(key string) {
	t.missingMu.Lock()
	if t.missing == nil {
		t.missing = map[string]bool{}
	}
	if len(t.missing) < maxMissing {
		t.missing[key] = true
	}
	t.missingMu.Unlock()
	t.askRefresh()
}

// takeMissingMarkers returns the markers acquires found missing since the
// last call, and forgets them.
func (t *Topology) takeMissingMarkers() []string {
	t.missingMu.Lock()
	defer t.missingMu.Unlock()
	out := make([]string, 0, len(t.missing))
	for k := range t.missing {
		out = append(out, k)
	}
	t.missing = nil
	return out
}

// markerWrite is one run of marker.lua: its op and arguments (the file's
// header lists them).
type markerWrite struct {
	op    string // create, reset, ack
	epoch string // ARGV[2]
	arg   string // ARGV[3]
	why   string // ARGV[4]
	hold  int64  // ARGV[5], ms
	at    string // ARGV[6], ms or ""
}

// writeMarkers runs w on every key, all served by the primary at addr
// ("" outside a cluster), in one pipeline that loads the script first, so
// thousands of keys cost one round trip and one copy of the script. It
// returns each marker as the script left it.
func (t *Topology) writeMarkers(ctx context.Context, addr string, keys []string, w markerWrite) (map[string]marker, error) {
	var c redis.Cmdable = t.client
	if t.mode == ModeCluster {
		c = t.node(addr)
	}
	cmds := make([]*redis.Cmd, len(keys))
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ScriptLoad(ctx, markerSrc)
		for i, k := range keys {
			cmds[i] = markerScript.EvalSha(ctx, p, []string{k}, w.op, w.epoch, w.arg, w.why, w.hold, w.at)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redisstore: writing %d store-reset markers (%s) on %s: %w", len(keys), w.op, primaryName(addr), err)
	}
	out := make(map[string]marker, len(keys))
	for i, k := range keys {
		reply, err := cmds[i].Slice()
		if err != nil {
			return nil, fmt.Errorf("redisstore: store-reset marker %s: %w", k, err)
		}
		if out[k], err = parseMarker(flatToMap(reply)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// primaryName is addr for messages: "the primary" outside a cluster.
func primaryName(addr string) string {
	if addr == "" {
		return "the primary"
	}
	return addr
}
