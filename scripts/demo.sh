#!/usr/bin/env bash
# The demo: Redis, the mock payment backend, idemproxy and Envoy, natively
# (no Docker), with envoy/envoy.yaml as shipped but for the bearer token
# Envoy shows idemproxy, which is made fresh for each run. Envoy listens on
# :10000; Toxiproxy (API :8474) forwards :10001 to it, so
# deploy/demo/lost-response.sh can lose a response on its way back.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_go
ensure_redis
ensure_envoy
command -v curl >/dev/null 2>&1 || die "curl is required for the readiness checks and the walkthrough"

state=.demo
mkdir -p "$state/bin" "$state/logs"
pids=()

cleanup() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    note "stopping demo"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
# Ctrl-C is how the demo ends: a clean exit, not an error.
trap 'exit 0' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports="6379 8081 8090 50051 50052 9090 10000 9901 8474 10001"
for port in $ports; do
  port_busy "$port" && die "port $port is already in use; stop whatever listens there (the demo uses ${ports// /, })"
done

wait_http() { # name url
  local i
  for i in $(seq 1 150); do
    curl -sf -o /dev/null "$2" && return 0
    sleep 0.2
  done
  die "$1 did not become ready ($2); see $state/logs/"
}

note "building idemproxy, backend and toxiproxy-server"
go build -o "$state/bin/" ./cmd/idemproxy ./cmd/backend
# Toxiproxy is a `tool` in go.mod: pinned there, never linked into idemproxy.
toxiproxy_pkg=github.com/Shopify/toxiproxy/v2
go build -o "$state/bin/toxiproxy-server" \
  -ldflags "-X $toxiproxy_pkg.Version=$(go list -m -f '{{.Version}}' "$toxiproxy_pkg")" "$toxiproxy_pkg/cmd/server"
# grpcurl for the walkthrough's gRPC step, pinned; built once into .demo/bin
# (go install sets no -version, so the binary's module version is checked).
grpcurl_version=v1.9.3
if ! go version -m "$state/bin/grpcurl" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/fullstorydev/grpcurl[[:space:]]+$grpcurl_version[[:space:]]"; then
  note "building grpcurl $grpcurl_version"
  GOBIN="$PWD/$state/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$grpcurl_version"
fi

note "starting redis-server on 127.0.0.1:6379"
# A fresh store every run (the walkthrough's keys are new), with AOF as in
# docker-compose.yml.
rm -rf "$state/redis" && mkdir -p "$state/redis"
redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly yes --dir "$state/redis" >"$state/logs/redis.log" 2>&1 &
pids+=($!)
note "starting the mock payment backend on :8081 (gRPC TestService on :8090)"
"$state/bin/backend" --addr 127.0.0.1:8081 --grpc-addr 127.0.0.1:8090 >"$state/logs/backend.log" 2>&1 &
pids+=($!)
wait_http backend http://127.0.0.1:8081/healthz
note "starting idemproxy (gRPC :50051, replay endpoint :50052, admin :9090)"
# A fresh token for this run: idemproxy accepts only streams that carry it,
# and Envoy's copy of envoy.yaml sends it. Never committed, never reused.
umask 077
token="demo-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$token" >"$state/auth-token"
sed "s|Bearer REPLACE_WITH_A_TOKEN_FROM_IDEMPROXY_AUTH_TOKEN_FILE|Bearer $token|" envoy/envoy.yaml >"$state/envoy.yaml"
grep -q "Bearer $token" "$state/envoy.yaml" || die "envoy/envoy.yaml has no token placeholder to fill"
umask 022
"$state/bin/idemproxy" --grpc-addr 127.0.0.1:50051 --replay-addr 127.0.0.1:50052 --admin-addr 127.0.0.1:9090 --auth-token-file "$state/auth-token" \
  --redis-url redis://127.0.0.1:6379/0 >"$state/logs/idemproxy.log" 2>&1 &
pids+=($!)
wait_http idemproxy http://127.0.0.1:9090/readyz
note "starting Envoy $ENVOY_VERSION on :10000 (admin 127.0.0.1:9901)"
"$ENVOY_BIN" -c "$state/envoy.yaml" --concurrency 1 --disable-hot-restart -l warn >"$state/logs/envoy.log" 2>&1 &
pids+=($!)
wait_http envoy http://127.0.0.1:9901/ready
note "starting Toxiproxy (API 127.0.0.1:8474): envoy_front 127.0.0.1:10001 -> Envoy :10000"
"$state/bin/toxiproxy-server" -host 127.0.0.1 -port 8474 >"$state/logs/toxiproxy.log" 2>&1 &
pids+=($!)
wait_http toxiproxy http://127.0.0.1:8474/version
curl -sf -o /dev/null --max-time 5 http://127.0.0.1:8474/proxies -H 'Content-Type: application/json' \
  -d '{"name":"envoy_front","listen":"127.0.0.1:10001","upstream":"127.0.0.1:10000","enabled":true}' \
  || die "creating the Toxiproxy proxy envoy_front failed; see $state/logs/toxiproxy.log"

cat <<'TXT'

IdemProxy demo is up: Envoy on http://localhost:10000, and through Toxiproxy
on http://localhost:10001 (logs in .demo/logs/, grpcurl in .demo/bin/).
Try, in another terminal:

  # 1. Charge $50. It runs at the backend.
  curl -i localhost:10000/charge -H 'Idempotency-Key: order-42' -d '{"amount":5000}'

  # 2. The client never saw the answer and retries: same charge id, replayed
  #    (Idempotent-Replayed: true), the backend is not called again.
  curl -i localhost:10000/charge -H 'Idempotency-Key: order-42' -d '{"amount":5000}'
  curl -s localhost:8081/stats          # "order-42": 1

  # 3. The same key with a different amount: 422 problem+json.
  curl -i localhost:10000/charge -H 'Idempotency-Key: order-42' -d '{"amount":9999}'

  # 4. A 45 s job. At T+35 s, past the 30 s lock TTL, a duplicate still gets
  #    409: the watchdog keeps the lock alive. After it ends: the replay.
  curl -s localhost:10000/slow -H 'X-Idempotency-Key: job-7' &
  sleep 35; curl -i localhost:10000/slow -H 'X-Idempotency-Key: job-7'
  wait; curl -i localhost:10000/slow -H 'X-Idempotency-Key: job-7'

  # 5. A duplicate that waits instead of getting 409: on /wait/ (route
  #    metadata x-idemproxy-in-progress: wait), a retry sent 1 s into a 5 s
  #    charge is held, and gets the replay the moment the charge completes.
  curl -s 'localhost:10000/wait/slow?delay=5s' -H 'Idempotency-Key: order-43' &
  sleep 1; curl -i 'localhost:10000/wait/slow?delay=5s' -H 'Idempotency-Key: order-43'

  # 6. No key: straight to the backend, idemproxy is not asked.
  curl -i localhost:10000/charge

  # 7. The double charge, for real: Toxiproxy (:10001, in front of Envoy)
  #    swallows the response to a charge; the retry with the same key gets
  #    the first charge back, and the backend's count stays at 1.
  deploy/demo/lost-response.sh

  # 8. gRPC: a keyed UnaryCall through Envoy (the key is call metadata, so
  #    the reflection stream grpcurl opens first stays keyless). The retry
  #    gets the same message and trailer (charge-id: ch_grpc_1) from
  #    idemproxy's replay endpoint, with idempotent-replayed: true; the
  #    backend ran it once. Bytes are base64 in grpcurl's JSON: NTAwMA== is
  #    "5000", the answer Y2hfZ3JwY18xOiA1MDAw is "ch_grpc_1: 5000".
  .demo/bin/grpcurl -plaintext -v -rpc-header 'idempotency-key: grpc-order-1' \
    -d '{"payload":{"body":"NTAwMA=="}}' localhost:10000 grpc.testing.TestService/UnaryCall
  .demo/bin/grpcurl -plaintext -v -rpc-header 'idempotency-key: grpc-order-1' \
    -d '{"payload":{"body":"NTAwMA=="}}' localhost:10000 grpc.testing.TestService/UnaryCall
  curl -s localhost:8081/stats          # "grpc-order-1": 1

  # 9. What idemproxy saw.
  curl -s localhost:9090/metrics | grep '^idemproxy_requests_total'

Ctrl-C stops everything.
TXT

# Any component dying ends the demo, so it never half-runs.
wait -n "${pids[@]}" || true
note "a demo process exited; see $state/logs/"
exit 1
