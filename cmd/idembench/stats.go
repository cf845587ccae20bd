package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// which is 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// parseCommandStats reads INFO commandstats: per command, how often it ran.
// Subcommands keep their parent's name ("config|resetstat").
func parseCommandStats(info string) (map[string]int64, error) {
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
// but no round trip.
var scriptInternal = []string{"del", "get", "hmget", "hset", "hdel", "hstrlen", "incr", "pexpire", "pttl", "time"}

// scriptCalls are the commands that run a script: one round trip each.
var scriptCalls = []string{"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}

// housekeeping are connection and monitoring commands (idemproxy's health
// PINGs, go-redis's handshake, our own INFO): not part of a request.
var housekeeping = []string{"ping", "info", "config", "client", "hello", "script", "command", "select", "auth", "quit", "readonly"}

// redisCount is one window's Redis commands by kind.
type redisCount struct {
	Requests  int64            `json:"round_trips"`      // scripts plus other data commands
	InScripts int64            `json:"inside_scripts"`   // commands run from Lua
	Excluded  map[string]int64 `json:"excluded"`         // housekeeping, by command
	Other     map[string]int64 `json:"other_data_calls"` // data commands sent directly
}

// classifyRedis splits the commandstats delta between two snapshots.
func classifyRedis(before, after map[string]int64) redisCount {
	c := redisCount{Excluded: map[string]int64{}, Other: map[string]int64{}}
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

// parseProcStat returns the CPU time (user plus system, all threads) from
// /proc/<pid>/stat. The command name may hold spaces and parentheses, so
// fields are counted from the last ')'.
func parseProcStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no command name in %q", b)
	}
	// After ")": state is field 3, utime field 14, stime field 15.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: only %d fields", len(f)+2)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// parseMachineCPU returns the CPU time all processes used, from the "cpu"
// line of /proc/stat: everything but idle and iowait.
func parseMachineCPU(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for i, s := range f[1:] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		// Fields: user nice system idle iowait irq softirq steal guest
		// guest_nice; guest time is already counted in user.
		if i != 3 && i != 4 && i < 8 {
			busy += n
		}
	}
	return time.Duration(busy) * clockTick, nil
}

func machineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineCPU(b)
}

func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(b)
}

// memory is a process's resident set, now and at its peak, in KiB.
type memory struct{ rss, peak int64 }

func parseProcStatus(b []byte) (memory, error) {
	var m memory
	var seen int
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return m, fmt.Errorf("proc status: %q: %w", line, err)
		}
		if name == "VmRSS" {
			m.rss = n
		} else {
			m.peak = n
		}
		seen++
	}
	if seen != 2 {
		return m, fmt.Errorf("proc status: VmRSS or VmHWM missing")
	}
	return m, nil
}

func procMemory(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	return parseProcStatus(b)
}

// resetPeakRSS starts a new VmHWM period, so each run reports its own peak
// (writing 5 to clear_refs; see proc(5)).
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// metricValue finds one series ("name" or `name{label="v"}`) in a
// Prometheus text exposition.
func metricValue(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return f, err == nil
		}
	}
	return 0, false
}

// getText fetches url's body.
func getText(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// metric reads one series from a server's Prometheus /metrics.
func metric(ctx context.Context, c *http.Client, admin, series string) (float64, error) {
	text, err := getText(ctx, c, "http://"+admin+"/metrics")
	if err != nil {
		return 0, err
	}
	v, ok := metricValue(text, series)
	if !ok {
		return 0, fmt.Errorf("metric %s not found at %s", series, admin)
	}
	return v, nil
}

// envoyCounter reads one counter from Envoy's admin /stats; a counter
// never incremented may be absent and reads as 0.
func envoyCounter(ctx context.Context, c *http.Client, admin, name string) (int64, error) {
	text, err := getText(ctx, c, "http://"+admin+"/stats?filter=^"+name+"$")
	if err != nil {
		return 0, err
	}
	line := strings.TrimSpace(text)
	if line == "" {
		return 0, nil
	}
	_, v, ok := strings.Cut(line, ": ")
	if !ok {
		return 0, fmt.Errorf("envoy stat line %q", line)
	}
	return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
}
