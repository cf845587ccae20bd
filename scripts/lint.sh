#!/usr/bin/env bash
# The style checks (make lint, and the first step of make test and so of
# CI): gofmt, which fails on any file it would change; go vet for Linux and
# macOS (build tags differ: the process supervisor's Pdeathsig is Linux
# only); and staticcheck, pinned as a tool in go.mod. The deploy module has
# its own go.mod and is vetted on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

note() { printf '==> %s\n' "$*" >&2; }

note "gofmt -l"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  printf 'gofmt: these files are not formatted (run gofmt -w on them):\n%s\n' "$unformatted" >&2
  exit 1
fi
for goos in linux darwin; do
  note "GOOS=$goos go vet ./..."
  GOOS=$goos go vet ./...
  (cd deploy && GOOS=$goos go vet ./...)
done
note "staticcheck ./..."
go tool staticcheck ./...
