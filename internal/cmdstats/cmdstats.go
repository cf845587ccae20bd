// Package cmdstats reads Redis's INFO commandstats and tells apart what a
// window's commands cost idemproxy's requests: round trips (scripts, and
// any data command sent on its own), commands run inside idemproxy's Lua
// scripts (Redis CPU, no round trip), and housekeeping that belongs to no
// request. idembench reports its figures per request with it.
package cmdstats

import (
	"bufio"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Parse reads INFO commandstats: per command, how often it ran.
// Subcommands keep their parent's name ("config|resetstat").
func Parse(info string) (map[string]int64, error) {
	calls := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		found := false
		for _, field := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("commandstats: %q: %w", line, err)
				}
				calls[name], found = n, true
			}
		}
		if !found {
			return nil, fmt.Errorf("commandstats: no calls= in %q", line)
		}
	}
	return calls, sc.Err()
}

// Redis commands idemproxy's scripts run from Lua (redisstore/lua/*.lua;
// a test keeps this list in step). INFO commandstats counts them like the
// commands clients send, so they are reported apart: they cost Redis CPU
// but no round trip. HGETALL is also the health check's read of the
// store-reset marker, once per primary and check, beside its INFO.
var scriptInternal = []string{"del", "get", "hexists", "hget", "hgetall", "hmget", "hset", "hdel", "hstrlen", "incr", "pexpire", "pttl", "set", "spublish", "time"}

// scriptCalls are the commands that run a script: one round trip each.
var scriptCalls = []string{"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}

// housekeeping are connection and monitoring commands (idemproxy's health
// PINGs, go-redis's handshake, idembench's own INFO): not part of a request.
// WAIT (c1) rides in the pipeline of the script it follows, and REPLCONF
// is the replica's own traffic: neither is a round trip of a request. SCAN
// is idemproxy's count of held keys (--held-keys-interval, once a minute),
// whatever the traffic; its pipelined HMGETs are counted with the
// commands inside scripts, a few hundred a minute. PUBLISH is the health
// check's probe of the channel ACL, beside its INFO.
var housekeeping = []string{"ping", "info", "config", "client", "hello", "script", "command", "select", "auth", "quit", "readonly",
	"wait", "replconf", "scan", "publish"}

// Count is one window's Redis commands by kind.
type Count struct {
	Requests  int64            `json:"round_trips"`      // scripts plus other data commands
	InScripts int64            `json:"inside_scripts"`   // commands run from Lua
	Excluded  map[string]int64 `json:"excluded"`         // housekeeping, by command
	Other     map[string]int64 `json:"other_data_calls"` // data commands sent directly
}

// Classify splits the delta between two snapshots that Parse read.
func Classify(before, after map[string]int64) Count {
	c := Count{Excluded: map[string]int64{}, Other: map[string]int64{}}
	for name, n := range after {
		d := n - before[name]
		if d <= 0 {
			continue
		}
		base, _, _ := strings.Cut(name, "|")
		switch {
		case slices.Contains(housekeeping, base):
			c.Excluded[base] += d
		case slices.Contains(scriptCalls, base):
			c.Requests += d
		case slices.Contains(scriptInternal, base):
			c.InScripts += d
		default:
			c.Requests += d
			c.Other[base] += d
		}
	}
	return c
}
