#!/usr/bin/env bash
# The benchmark (make bench): builds idemproxy, the mock backend and
# idembench, then runs idembench, which starts its own Redis, backend,
# Envoy, idemproxy and null ext_proc server on free loopback ports, prints
# the table and the goal ratios, and stops everything. Arguments go to
# idembench, e.g. `./scripts/bench.sh --only c,d --duration 10s`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_go
ensure_redis
ensure_envoy
note "Envoy: $ENVOY_BIN"

bin=.demo/bench-bin
mkdir -p "$bin"
note "building idemproxy, backend and idembench into $bin"
go build -o "$bin/" ./cmd/idemproxy ./cmd/backend ./cmd/idembench
note "running idembench $*"
exec "$bin/idembench" --envoy-config envoy/envoy.yaml "$@"
