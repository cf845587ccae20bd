-- peek: what holds a key, for duplicates waiting on it (--in-progress=wait):
-- acquire.lua's answers for a key it would not take, and {"free"} where it
-- would. It never creates a record or takes a fence.
--
-- It is not read-only, so neither EVALSHA_RO nor `flags=no-writes`: a
-- record in progress is marked (field w), so that the script settling it
-- publishes on its shard channel. acquire.lua marks it for the first
-- waiter, but the owner a waiter peeks at may be a newer one, whose own
-- acquire marked nothing.
--
-- KEYS[1]  record hash
--
-- Returns one of (the shapes of acquire.lua):
--   {"free"}                                         nothing holds the key
--   {"in_progress", fp, ms, run}                     an owner holds the key; ms of lease left; run:
--                                                    ms since its grant (field ct), -1 without one
--   {"unknown", fp, ms, why}                         an earlier run's outcome is unknown; held for
--                                                    ms more; why is "abandoned" or "expired"
--   {"completed", fp, status, hdr, body, bs, enc}    the stored response
--
-- An expired lease is reported as "unknown"/"expired" with or without
-- takeover (--on-unknown=rerun-after-ttl): the waiter then acquires, and
-- acquire.lua decides.
local v = redis.call("HMGET", KEYS[1], "st", "fp", "lx", "status", "hdr", "body", "bs", "enc", "ct")
local st = v[1]
if not st then
  return {"free"}
end
if st == "p" then
  local left
  local run = -1
  local lx = tonumber(v[3])
  if lx then
    local t = redis.call("TIME")
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    left = lx - now
    if tonumber(v[9]) then
      run = math.max(now - tonumber(v[9]), 0)
    end
    if left <= 0 then
      return {"unknown", v[2], redis.call("PTTL", KEYS[1]), "expired"}
    end
  else
    -- A record of the previous version: its lease is the key's TTL.
    left = redis.call("PTTL", KEYS[1])
  end
  redis.call("HSET", KEYS[1], "w", "1")
  return {"in_progress", v[2], left, run}
end
if st == "u" then
  return {"unknown", v[2], redis.call("PTTL", KEYS[1]), "abandoned"}
end
return {"completed", v[2], v[4], v[5], v[6], v[7], v[8] or ""}
