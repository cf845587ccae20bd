#!/usr/bin/env bash
# Capacity figures (make capacity; docs/capacity.md): what one key costs in
# Redis 7.0 and in Valkey 8.1 (bytes per record hash and fence counter, by
# MEMORY USAGE and by used_memory growth), for the record kinds and body
# sizes of redisstore's TestCapacity, which writes them through the store.
# Each store is started by the test on a free loopback port and stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_go
ensure_redis
ensure_valkey
for flavor in redis valkey; do
  note "REDIS_FLAVOR=$flavor go test ./redisstore/ -run '^TestCapacity\$' -count=1 -v"
  out=$(REDIS_FLAVOR=$flavor go test ./redisstore/ -run '^TestCapacity$' -count=1 -v 2>&1) \
    || { printf '%s\n' "$out" >&2; die "TestCapacity failed on $flavor"; }
  # The table is the test's log; the rest of -v's output is left out.
  printf '%s\n' "$out" | sed -n '/: bytes per key (/,/^--- /p' | sed '$d'
done
