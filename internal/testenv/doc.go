// Package testenv is the one place that starts and watches the real
// programs the tests and the benchmark run: child processes (own process
// group, killed with the test binary on Linux, output kept for failure
// messages, always reaped), the pinned Envoy and redis-server (found and
// version-checked here and nowhere else), envoy.yaml rewritten for free
// ports, and readings of Prometheus metrics, Envoy admin stats and /proc.
//
// Every operation has an error-returning core, usable from a binary
// (cmd/idembench), and most have a thin wrapper taking a TB (the part of
// testing.TB they use: idembench links no testing package) first, which
// fails the test with the core's error and stops what it started in
// t.Cleanup. The wrappers call t.FailNow, so, like require, they may only
// run on the test's own goroutine; a goroutine in a test uses the core
// function and reports its error on a channel (see Receive).
//
// Under `go test -short` every wrapper that needs a real binary skips the
// test (NeedsBinaries), so `make unit` runs without Envoy and Redis. CI
// never passes -short.
//
// Subpackages: redistopo starts Redis as one server, a Cluster or a
// Sentinel topology; toxi runs Toxiproxy through its own client package.
package testenv
