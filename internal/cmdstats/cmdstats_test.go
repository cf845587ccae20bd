package cmdstats

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

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

func TestParse(t *testing.T) {
	t.Run("calls per command, subcommands by full name", func(t *testing.T) {
		got, err := Parse(commandStats)
		require.NoError(t, err)
		require.Equal(t, map[string]int64{"evalsha": 2000, "eval": 2, "hget": 3000,
			"config|resetstat": 1, "client|setinfo": 4, "ping": 7}, got)
	})
	t.Run("a line without calls is an error", func(t *testing.T) {
		_, err := Parse("cmdstat_get:usec=1\r\n")
		require.ErrorContains(t, err, "no calls=")
	})
	t.Run("no commands yet is empty", func(t *testing.T) {
		got, err := Parse("# Commandstats\r\n")
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

func TestClassify(t *testing.T) {
	before := map[string]int64{"evalsha": 100, "hmget": 50, "ping": 1}
	after := map[string]int64{"evalsha": 300, "eval": 1, "hmget": 250, "ping": 4, "client|setinfo": 1,
		"incr": 20, "lrange": 5}
	got := Classify(before, after)
	require.Equal(t, Count{
		Requests:  201 + 5, // scripts, plus a data command no script runs
		InScripts: 200 + 20,
		Excluded:  map[string]int64{"ping": 3, "client": 1},
		Other:     map[string]int64{"lrange": 5},
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
	require.Equal(t, want, slices.Compact(used), "update scriptInternal in cmdstats.go")
}
