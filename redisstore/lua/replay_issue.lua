-- replay_issue: a single-use replay token for a completed record, for the
-- replay endpoint (a stored response served as an upstream response). The
-- token's key sits beside the record (same hash tag, same slot) and holds
-- the record's completion digest (ctk), so the token replays this record
-- only: not one written later under the same key after a deletion.
--
-- KEYS[1]  record hash
-- KEYS[2]  token key (prefix{id}:replay:<random>)
-- ARGV[1]  token lifetime in milliseconds
--
-- Returns 1 when issued, 0 when the record is not a completed one with its
-- body stored (nothing is written then).
local v = redis.call("HMGET", KEYS[1], "st", "bs", "ctk")
if v[1] ~= "c" or (v[2] ~= "1" and v[2] ~= "T") or not v[3] then
  return 0
end
redis.call("SET", KEYS[2], v[3], "PX", ARGV[1])
return 1
