#!/usr/bin/env bash
# The "double charge" story from the README, played for real: Toxiproxy sits
# in front of Envoy and swallows the response to a charge on its way back to
# the client. The backend has charged; the client saw nothing and retries
# with the same key; IdemProxy replays the first charge, and the backend's
# count stays at 1.
#
# Works against the native demo (make demo) and the compose demo alike; every
# address can be overridden:
#   TOXIPROXY_API   Toxiproxy's HTTP API             (http://localhost:8474)
#   FRONT           Envoy, through Toxiproxy         (http://localhost:10001)
#   BACKEND_STATS   the mock backend's /stats        (http://localhost:8081/stats)
#   PROXY_NAME      the Toxiproxy proxy before Envoy (envoy_front)
#   PROXY_LISTEN, PROXY_UPSTREAM  used only to create that proxy when it does
#                   not exist yet (127.0.0.1:10001 -> 127.0.0.1:10000, native)
#   LOST_TIMEOUT    seconds the client waits for the lost answer (3)
# Needs only bash, curl, grep and sed. Exits non-zero when any step does not
# turn out as the story says.
set -euo pipefail

TOXIPROXY_API=${TOXIPROXY_API:-http://localhost:8474}
FRONT=${FRONT:-http://localhost:10001}
BACKEND_STATS=${BACKEND_STATS:-http://localhost:8081/stats}
PROXY_NAME=${PROXY_NAME:-envoy_front}
PROXY_LISTEN=${PROXY_LISTEN:-127.0.0.1:10001}
PROXY_UPSTREAM=${PROXY_UPSTREAM:-127.0.0.1:10000}
LOST_TIMEOUT=${LOST_TIMEOUT:-3}

toxic=lose_response
key="order-$(date +%s)-$$-$RANDOM"
body='{"amount":5000}'
tmp=$(mktemp -d)
toxic_added=false

cleanup() {
  # A failed run must not leave the proxy swallowing every response.
  if $toxic_added; then
    curl -s -o /dev/null --max-time 5 -X DELETE "$TOXIPROXY_API/proxies/$PROXY_NAME/toxics/$toxic" || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# api METHOD PATH [JSON]: calls Toxiproxy, prints the HTTP status ("000" when
# it cannot be reached); the response body is left in $tmp/api.
api() {
  local args=(-s -o "$tmp/api" -w '%{http_code}' --max-time 5 -X "$1" "$TOXIPROXY_API$2")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' -d "$3")
  curl "${args[@]}" || true
}

# executions prints how often the backend ran the charge with our key: its
# entry in the "keys" object of /stats (other objects there are keyed by the
# idempotency key too).
executions() {
  local stats n
  stats=$(curl -sf --max-time 5 "$BACKEND_STATS") || fail "cannot read the backend's stats at $BACKEND_STATS"
  n=$(printf '%s' "$stats" | sed -n 's/.*"keys":{\([^}]*\)}.*/\1/p' |
    grep -o "\"$key\":[0-9]*" | head -n 1 | sed 's/.*://' || true)
  printf '%s\n' "${n:-0}"
}

charge() { # extra curl args...
  curl -sS -i -X POST "$FRONT/charge" -H "Idempotency-Key: $key" \
    -H 'Content-Type: application/json' -d "$body" "$@"
}

step "(a) Toxiproxy proxy '$PROXY_NAME' in front of Envoy"
code=$(api GET "/proxies/$PROXY_NAME")
case $code in
  200) echo "exists: $(grep -o '"listen":"[^"]*","upstream":"[^"]*"' "$tmp/api" || cat "$tmp/api")" ;;
  404)
    code=$(api POST /proxies "{\"name\":\"$PROXY_NAME\",\"listen\":\"$PROXY_LISTEN\",\"upstream\":\"$PROXY_UPSTREAM\",\"enabled\":true}")
    [ "$code" = 201 ] || fail "creating the proxy: HTTP $code: $(cat "$tmp/api")"
    echo "created: $PROXY_LISTEN -> $PROXY_UPSTREAM"
    ;;
  000) fail "Toxiproxy's API is not reachable at $TOXIPROXY_API (is the demo running?)" ;;
  *) fail "Toxiproxy GET /proxies/$PROXY_NAME: HTTP $code: $(cat "$tmp/api")" ;;
esac
# A toxic left over by an interrupted run would poison the retry.
api DELETE "/proxies/$PROXY_NAME/toxics/$toxic" >/dev/null

step "(b) toxic '$toxic': drop every byte Envoy sends back (timeout toxic, downstream, timeout 0)"
# The request still reaches Envoy and the backend, and Envoy writes its whole
# response (Toxiproxy reads and discards it, closing nothing), so IdemProxy
# sees the exchange complete. The client just never hears back.
code=$(api POST "/proxies/$PROXY_NAME/toxics" \
  "{\"name\":\"$toxic\",\"type\":\"timeout\",\"stream\":\"downstream\",\"toxicity\":1.0,\"attributes\":{\"timeout\":0}}")
[ "$code" = 200 ] || fail "adding the toxic: HTTP $code: $(cat "$tmp/api")"
toxic_added=true
echo "added"

step "(c) charge \$50 with Idempotency-Key: $key via $FRONT; the answer is lost"
echo "\$ curl -i --max-time $LOST_TIMEOUT -X POST $FRONT/charge -H 'Idempotency-Key: $key' -d '$body'"
rc=0
charge --max-time "$LOST_TIMEOUT" >"$tmp/lost" 2>&1 || rc=$?
cat "$tmp/lost"
if [ "$rc" = 0 ] && grep -q '^HTTP/[0-9.]* ' "$tmp/lost"; then
  fail "the client got an answer; the response was not lost"
fi
echo "the client saw no response (curl exit $rc) and cannot know whether the card was charged"

step "(d) meanwhile, at the backend"
n=0
for _ in $(seq 1 50); do
  n=$(executions)
  [ "$n" -ge 1 ] && break
  sleep 0.1
done
echo "backend executions for $key: $n"
[ "$n" = 1 ] || fail "expected the charge to have run once at the backend, got $n"
echo "the charge happened"

step "(e) the network heals: remove the toxic"
code=$(api DELETE "/proxies/$PROXY_NAME/toxics/$toxic")
[ "$code" = 204 ] || fail "removing the toxic: HTTP $code: $(cat "$tmp/api")"
toxic_added=false
echo "removed"

step "(f) the client retries: same key, same body"
echo "\$ curl -i -X POST $FRONT/charge -H 'Idempotency-Key: $key' -d '$body'"
charge --max-time 10 >"$tmp/retry" || fail "the retry failed"
cat "$tmp/retry"
echo
grep -q '^HTTP/[0-9.]* 200' "$tmp/retry" || fail "expected 200 on the retry"
grep -qi '^idempotent-replayed: *true' "$tmp/retry" || fail "expected Idempotent-Replayed: true on the retry"
id=$(grep -o '"id":"[^"]*"' "$tmp/retry" | head -n 1 | sed 's/"id":"//; s/"$//')
[ -n "$id" ] || fail "no charge id in the replayed response"
echo "replayed charge $id: the answer the client lost"

step "(g) the backend again"
n=$(executions)
echo "backend executions for $key: $n"
[ "$n" = 1 ] || fail "expected 1 execution, got $n: the card was charged twice"
echo
echo "no double charge: charged once ($id), the retry got the first response back"
