package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A real INFO commandstats reply from redis-server 7.0.
const commandStats = "# Commandstats\r\n" +
	"cmdstat_evalsha:calls=2000,usec=30000,usec_per_call=15.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_eval:calls=2,usec=106,usec_per_call=53.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_hget:calls=3000,usec=800,usec_per_call=0.27,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_config|resetstat:calls=1,usec=35,usec_per_call=35.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_client|setinfo:calls=4,usec=4,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_ping:calls=7,usec=7,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n"

func TestParseCommandStats(t *testing.T) {
	t.Run("calls per command, subcommands by full name", func(t *testing.T) {
		got, err := parseCommandStats(commandStats)
		require.NoError(t, err)
		require.Equal(t, map[string]int64{"evalsha": 2000, "eval": 2, "hget": 3000,
			"config|resetstat": 1, "client|setinfo": 4, "ping": 7}, got)
	})
	t.Run("a line without calls is an error", func(t *testing.T) {
		_, err := parseCommandStats("cmdstat_get:usec=1\r\n")
		require.ErrorContains(t, err, "no calls=")
	})
	t.Run("no commands yet is empty", func(t *testing.T) {
		got, err := parseCommandStats("# Commandstats\r\n")
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

func TestClassifyRedis(t *testing.T) {
	before := map[string]int64{"evalsha": 100, "hmget": 50, "ping": 1}
	after := map[string]int64{"evalsha": 300, "eval": 1, "hmget": 250, "ping": 4, "client|setinfo": 1,
		"incr": 20, "hgetall": 5}
	got := classifyRedis(before, after)
	require.Equal(t, redisCount{
		Requests:  201 + 5, // scripts, plus a data command no script runs
		InScripts: 200 + 20,
		Excluded:  map[string]int64{"ping": 3, "client": 1},
		Other:     map[string]int64{"hgetall": 5},
	}, got)
}

// TestScriptInternal_MatchesLua keeps the list of commands run inside
// idemproxy's scripts in step with redisstore/lua: a new command there
// would otherwise be counted as a round trip.
func TestScriptInternal_MatchesLua(t *testing.T) {
	files, err := filepath.Glob("../../redisstore/lua/*.lua")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	call := regexp.MustCompile(`redis\.p?call\(\s*["']([A-Za-z]+)["']`)
	var used []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range call.FindAllStringSubmatch(string(b), -1) {
			used = append(used, strings.ToLower(m[1]))
		}
	}
	slices.Sort(used)
	want := slices.Clone(scriptInternal)
	slices.Sort(want)
	require.Equal(t, want, slices.Compact(used), "update scriptInternal in stats.go")
}

func TestParseProcStat(t *testing.T) {
	t.Run("user plus system time, command name with spaces and parentheses", func(t *testing.T) {
		line := "4242 (envoy (worker) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 123 456 789\n"
		got, err := parseProcStat([]byte(line))
		require.NoError(t, err)
		require.Equal(t, 325*clockTick, got)
	})
	t.Run("a short line is an error", func(t *testing.T) {
		_, err := parseProcStat([]byte("1 (x) S 1 2"))
		require.Error(t, err)
	})
	t.Run("this process", func(t *testing.T) {
		got, err := procCPU(os.Getpid())
		require.NoError(t, err)
		require.GreaterOrEqual(t, got, time.Duration(0))
	})
}

func TestParseMachineCPU(t *testing.T) {
	t.Run("everything but idle and iowait", func(t *testing.T) {
		stat := "cpu  100 5 50 9000 40 3 2 1 7 0\ncpu0 50 2 25 4500 20 1 1 0 3 0\n"
		got, err := parseMachineCPU([]byte(stat))
		require.NoError(t, err)
		require.Equal(t, 161*clockTick, got)
	})
	t.Run("this machine", func(t *testing.T) {
		got, err := machineCPU()
		require.NoError(t, err)
		require.Positive(t, got)
	})
	t.Run("not the aggregate line is an error", func(t *testing.T) {
		_, err := parseMachineCPU([]byte("intr 1 2 3\n"))
		require.Error(t, err)
	})
}

func TestParseProcStatus(t *testing.T) {
	t.Run("current and peak resident set", func(t *testing.T) {
		status := "Name:\tidemproxy\nVmPeak:\t 1000000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n"
		got, err := parseProcStatus([]byte(status))
		require.NoError(t, err)
		require.Equal(t, memory{rss: 40960, peak: 51200}, got)
	})
	t.Run("missing fields are an error", func(t *testing.T) {
		_, err := parseProcStatus([]byte("Name:\tx\nVmRSS:\t1 kB\n"))
		require.Error(t, err)
	})
	t.Run("this process, after resetting its peak", func(t *testing.T) {
		require.NoError(t, resetPeakRSS(os.Getpid()))
		m, err := procMemory(os.Getpid())
		require.NoError(t, err)
		require.Positive(t, m.rss)
		require.GreaterOrEqual(t, m.peak, m.rss)
	})
}

func TestMetricValue(t *testing.T) {
	text := "# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 2015\n" +
		"idemproxy_requests_total{outcome=\"acquired\"} 1000\nidemproxy_requests_total{outcome=\"replayed\"} 3\n"
	v, ok := metricValue(text, "go_goroutines")
	require.True(t, ok)
	require.Equal(t, 2015.0, v)
	v, ok = metricValue(text, `idemproxy_requests_total{outcome="replayed"}`)
	require.True(t, ok)
	require.Equal(t, 3.0, v)
	_, ok = metricValue(text, "go_gor")
	require.False(t, ok)
}
