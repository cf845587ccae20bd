package main

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/redisstore"
)

func TestParseSettings_redisModes(t *testing.T) {
	t.Run("defaults: standalone, no replicas waited for", func(t *testing.T) {
		s, err := parseSettings(nil, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
		require.NoError(t, err)
		require.Equal(t, "standalone", s.RedisMode)
		require.Zero(t, s.MinReplicas)
		require.False(t, s.AllReplicas)
		require.Equal(t, 250*time.Millisecond, s.ReplicaTimeout)
	})
	t.Run("where Redis fails over, a write waits for every promotable replica unless told otherwise", func(t *testing.T) {
		for mode, url := range map[string]string{
			"cluster":  "redis://127.0.0.1:7000",
			"sentinel": "redis://127.0.0.1:26379?master_name=mymaster",
		} {
			s, err := parseSettings([]string{"--redis-mode", mode, "--redis-url", url}, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
			require.NoError(t, err)
			require.True(t, s.AllReplicas, mode)
			for _, n := range []int{0, 1} {
				s, err = parseSettings([]string{"--redis-mode", mode, "--redis-url", url}, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051",
					"IDEMPROXY_REDIS_MIN_REPLICAS": strconv.Itoa(n)}.get, io.Discard)
				require.NoError(t, err)
				require.False(t, s.AllReplicas, "%s: a count said explicitly", mode)
				require.Equal(t, n, s.MinReplicas)
			}
			s, err = parseSettings([]string{"--redis-mode", mode, "--redis-url", url, "--redis-min-replicas", "all"}, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
			require.NoError(t, err)
			require.True(t, s.AllReplicas, "%s: all said explicitly", mode)
		}
		_, err := parseSettings([]string{"--redis-min-replicas", "one"}, env{}.get, io.Discard)
		require.ErrorContains(t, err, `"one" is neither all nor a whole number`)
	})
	good := map[string][]string{
		"cluster seed nodes": {"--redis-mode", "cluster", "--redis-url",
			"redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002"},
		"cluster configuration endpoint with TLS and an ACL user": {"--redis-mode", "cluster", "--redis-url",
			"rediss://app:secret@127.0.0.1:6379"},
		"sentinel": {"--redis-mode", "sentinel", "--redis-url",
			"redis://127.0.0.1:26379?master_name=mymaster&addr=127.0.0.1:26380"},
		"sentinel with ACL users on both": {"--redis-mode", "sentinel", "--redis-url",
			"rediss://sentinel-user:pw@127.0.0.1:26379/0?master_name=mymaster&username=app&password=secret"},
		"durable writes": {"--redis-min-replicas", "1", "--redis-replica-timeout", "300ms"},
	}
	for name, args := range good {
		t.Run(name, func(t *testing.T) {
			s, err := parseSettings(args, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
			require.NoError(t, err)
			conn, err := redisstore.Connect(redisstore.ConnectOptions{Mode: s.mode(), URL: s.RedisURL, Timeout: s.RedisTimeout})
			require.NoError(t, err)
			require.NoError(t, conn.Close())
		})
	}
	bad := map[string]struct {
		args []string
		want string
	}{
		"unknown mode":            {[]string{"--redis-mode", "ring"}, `--redis-mode "ring" must be standalone, cluster or sentinel`},
		"sentinel without master": {[]string{"--redis-mode", "sentinel", "--redis-url", "redis://127.0.0.1:26379"}, "?master_name=NAME"},
		"several addresses standalone": {[]string{"--redis-url", "redis://127.0.0.1:7000?addr=127.0.0.1:7001"},
			"several addresses need --redis-mode cluster or sentinel"},
		"cluster database":     {[]string{"--redis-mode", "cluster", "--redis-url", "redis://127.0.0.1:7000/3"}, `database "3": a Redis Cluster has database 0 only`},
		"bad cluster addr":     {[]string{"--redis-mode", "cluster", "--redis-url", "redis://127.0.0.1:7000?addr=nope"}, "addr param: nope"},
		"bad scheme":           {[]string{"--redis-mode", "cluster", "--redis-url", "http://127.0.0.1:7000"}, "(cluster mode): redis: invalid URL scheme: http"},
		"unknown option":       {[]string{"--redis-mode", "sentinel", "--redis-url", "redis://h:1?master_name=m&colour=red"}, "unexpected option: colour"},
		"ca without tls":       {[]string{"--redis-mode", "cluster", "--redis-url", "redis://h:1", "--redis-ca", "ca.pem"}, "--redis-ca needs a rediss://"},
		"negative replicas":    {[]string{"--redis-min-replicas", "-1"}, "--redis-min-replicas must not be negative"},
		"all without failover": {[]string{"--redis-min-replicas", "all"}, "--redis-min-replicas all needs --redis-mode cluster or sentinel"},
		"wait too long": {[]string{"--redis-min-replicas", "1", "--redis-replica-timeout", "1s"},
			"--redis-replica-timeout 1s must be shorter than --redis-timeout 1s"},
	}
	for name, c := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := parseSettings(c.args, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
			var usage usageError
			require.ErrorAs(t, err, &usage, "exit 2")
			require.ErrorContains(t, err, c.want)
		})
	}
	t.Run("a malformed URL is named without its password", func(t *testing.T) {
		_, err := parseSettings([]string{"--redis-mode", "cluster", "--redis-url", "redis://app:s3cret@h ost:1"}, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
		require.Error(t, err)
		require.NotContains(t, err.Error(), "s3cret")
	})
	t.Run("the environment selects the mode", func(t *testing.T) {
		s, err := parseSettings(nil, env{"IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051", "IDEMPROXY_REDIS_MODE": "sentinel",
			"IDEMPROXY_REDIS_URL": "redis://127.0.0.1:26379?master_name=m"}.get, io.Discard)
		require.NoError(t, err)
		require.Equal(t, "sentinel", s.RedisMode)
	})
}

// TestConfigMap_redisExamples parses the topology examples of the shipped
// Kubernetes ConfigMap with the real parser, so they cannot rot.
func TestConfigMap_redisExamples(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", "configmap.yaml"))
	require.NoError(t, err)
	modes := 0
	var mode string
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimLeft(strings.TrimSpace(line), "# ")
		if v, ok := strings.CutPrefix(line, "IDEMPROXY_REDIS_MODE: "); ok {
			mode = v
		}
		if v, ok := strings.CutPrefix(line, "IDEMPROXY_REDIS_URL: "); ok {
			_, err := redisstore.ParseURL(redisstore.Mode(mode), v)
			require.NoError(t, err, "%s: %s", mode, v)
			modes++
		}
	}
	require.Equal(t, 3, modes, "standalone, cluster and sentinel")
}
