#!/usr/bin/env bash
# The test command: installs what the tests need (redis-server, Envoy), then
# runs vet and the whole suite with the race detector. The tests start their
# own Redis, Envoy, idemproxy and backend on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_go
ensure_redis
ensure_envoy
note "Envoy: $ENVOY_BIN"

note "go vet ./..."
go vet ./...
note "go test -race ./..."
go test -race -count=1 -timeout 12m "$@" ./...
# The deployment artifacts (compose, Dockerfile, Kubernetes, Istio, Envoy
# Gateway) are checked by their own module, so its heavy test-only
# dependencies stay out of the server's go.mod.
note "deploy: go vet ./... && go test ./..."
(cd deploy && go vet ./... && go test -count=1 -timeout 10m ./...)
