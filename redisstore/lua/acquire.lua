-- acquire: take a free key for one owner, or report the record that holds it.
-- Reading and creating happen in one script so two requests can never both
-- see the key free, and the caller learns everything in one round trip.
--
-- KEYS[1]  record hash
-- KEYS[2]  fence counter of the same key (same hash tag as KEYS[1])
-- KEYS[3]  optional: the store-reset marker of the same slot (marker.go).
--          Given and missing, Redis lost its memory (a restart without
--          persistence, a flush, a failover to a replica without the data);
--          given and noting a reset (field until, ms, still ahead), the
--          health check found that it did. Either way a free key may be one
--          whose record was lost, so it is not granted; {"reset"} instead
-- ARGV[1]  owner token
-- ARGV[2]  request fingerprint (bytes)
-- ARGV[3]  lease in milliseconds
-- ARGV[4]  key TTL of the new record in milliseconds: the hold (retention),
--          or the lease itself with takeover
-- ARGV[5]  fence counter TTL in milliseconds
-- ARGV[6]  "1": takeover, "0": hold. Takeover is --on-unknown=rerun-after-ttl
--          (idem.Lease.Takeover, processor's RerunAfterTTL): an expired lease
--          frees the key, so the next request runs, possibly a second time.
--          Hold (the default) reports it as an unknown outcome instead
-- ARGV[7]  scope, for operators (authority and identity hash, never the key)
-- ARGV[8]  "w": the caller will wait if the key is in progress, so the
--          record is marked (field w) and its settling script publishes;
--          keys nobody waits for cost no SPUBLISH (peek.lua marks it too)
-- ARGV[9]  deadline, ms on this server's clock (TIME), "" for none: past it
--          the caller has given up waiting for the reply (and answered its
--          client 503), so no new lock is created; {"late"} instead
-- ARGV[10] optional: a replay token's lifetime in milliseconds, "" or absent
--          for none. Given, a completed record with its body stored and
--          this request's fingerprint ARGV[2] gets a replay token as
--          replay_issue.lua would issue it (the same key, value and TTL), in
--          this round trip: the token key is then the last of KEYS (KEYS[3]
--          without a marker, KEYS[4] with one). Only for a record the
--          replay endpoint is to serve: one that ended with trailers (bs
--          "T"), or, with ARGV[11] "1", any (bs "1")
-- ARGV[11] "1": a token for every replayable record (--replay-all-via-endpoint)
--
-- Returns one of:
--   {"acquired", fence}                              a new in-progress record is ours (or the
--                                                    one an earlier try with this token made)
--   {"late"}                                         the key was free, but ARGV[9] has passed
--   {"reset"}                                        the key was free, but KEYS[3] is missing
--                                                    or notes a reset
--   {"in_progress", fp, ms, run}                     another owner holds the key; ms of lease left;
--                                                    run: ms since its grant (field ct), -1 for a
--                                                    record of a version that did not note it
--   {"unknown", fp, ms, why}                         an earlier run's outcome is unknown; held for
--                                                    ms more; why is "abandoned" (its owner said so)
--                                                    or "expired" (its lease ran out: a crash)
--   {"completed", fp, status, hdr, body, bs, enc}    the stored response; enc is the
--                                                    sealing key id, "" when plain
--   {"completed", fp, status, hdr, body, bs, enc, "1"}  the same, and the replay token
--                                                    asked for by ARGV[10] was issued
--
-- The lease ends at field lx (ms, Redis clock), inside a record that lives
-- for the hold: so a retry can tell "forwarded, then the owner vanished"
-- (lx passed, record still there) from "free" (no record). Records of the
-- previous version have no lx: their lease is the key's own TTL.
--
-- The fence grows with every grant of the key, also across releases and
-- expiries, so a backend can refuse a request whose lease was lost to a newer
-- one. It lives beside the record because the record is deleted on release.
-- Commands are few on purpose (a test counts them): one HMGET reads every
-- field any answer needs, and Redis's clock is read only when a lease is
-- written or compared.
local v = redis.call("HMGET", KEYS[1], "st", "fp", "lx", "tok", "fence", "status", "hdr", "body", "bs", "enc", "ct", "ctk")
local st = v[1]
local marker, replayKey = KEYS[3], nil
if ARGV[10] and ARGV[10] ~= "" then
  replayKey = KEYS[#KEYS]
  if #KEYS < 4 then
    marker = nil
  end
end
local now
local function clock()
  if not now then
    local t = redis.call("TIME")
    now = t[1] * 1000 + math.floor(t[2] / 1000)
  end
  return now
end

local function grant()
  if ARGV[9] and ARGV[9] ~= "" and clock() > tonumber(ARGV[9]) then
    return {"late"}
  end
  local fence = redis.call("INCR", KEYS[2])
  redis.call("PEXPIRE", KEYS[2], ARGV[5])
  local at = clock()
  redis.call("HSET", KEYS[1], "st", "p", "tok", ARGV[1], "fp", ARGV[2], "fence", fence,
    "lx", string.format("%.0f", at + ARGV[3]), "ct", string.format("%.0f", at), "sc", ARGV[7])
  redis.call("PEXPIRE", KEYS[1], ARGV[4])
  return {"acquired", fence}
end

-- How long an in-progress record has run, from its grant time ct (ms on
-- this server's clock, already read to compare lx); -1 without one.
local function running(ct)
  ct = tonumber(ct)
  if not ct then
    return -1
  end
  return math.max(now - ct, 0)
end

-- The caller waits for this in-progress record: its settlement publishes.
local function waiting()
  if ARGV[8] == "w" then
    redis.call("HSET", KEYS[1], "w", "1")
  end
end

if not st then
  if marker then
    local mk = redis.call("HMGET", marker, "epoch", "until")
    if not mk[1] or (mk[2] and tonumber(mk[2]) > clock()) then
      return {"reset"}
    end
  end
  return grant()
end
-- Our own token: this is a retry of an acquire whose reply was lost (a
-- connection cut during a failover, a client-side retry). The lock is ours.
if st == "p" and v[4] == ARGV[1] then
  return {"acquired", tonumber(v[5])}
end
if st == "p" then
  local lx = tonumber(v[3])
  if not lx then
    waiting()
    return {"in_progress", v[2], redis.call("PTTL", KEYS[1]), -1}
  end
  if lx > clock() then
    waiting()
    return {"in_progress", v[2], lx - now, running(v[11])}
  end
  if ARGV[6] == "1" then
    return grant()
  end
  return {"unknown", v[2], redis.call("PTTL", KEYS[1]), "expired"}
end
if st == "u" then
  return {"unknown", v[2], redis.call("PTTL", KEYS[1]), "abandoned"}
end
local reply = {"completed", v[2], v[6], v[7], v[8], v[9], v[10] or ""}
-- The replay token, as replay_issue.lua writes it: holding the record's
-- completion digest (ctk), so it replays this record only. A request with
-- another fingerprint is refused, not replayed: no token for it.
if replayKey and st == "c" and v[2] == ARGV[2] and v[12] and (v[9] == "T" or (v[9] == "1" and ARGV[11] == "1")) then
  redis.call("SET", replayKey, v[12], "PX", ARGV[10])
  reply[8] = "1"
end
return reply
