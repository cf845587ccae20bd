-- acquire: take a free key for one owner, or report the record that holds it.
-- Reading and creating happen in one script so two requests can never both
-- see the key free, and the caller learns everything in one round trip.
--
-- KEYS[1]  record hash
-- KEYS[2]  fence counter of the same key (same hash tag as KEYS[1])
-- ARGV[1]  owner token
-- ARGV[2]  request fingerprint (bytes)
-- ARGV[3]  lock TTL in milliseconds
-- ARGV[4]  fence counter TTL in milliseconds
--
-- Returns one of:
--   {"acquired", fence}                              a new in-progress record is ours
--   {"in_progress", fp, pttl}                        another owner holds the key; pttl in ms
--   {"unknown", fp, pttl}                            an earlier run's outcome is unknown; held for pttl ms
--   {"completed", fp, status, hdr, body, bs, enc}    the stored response; enc is the
--                                                    sealing key id, "" when plain
--
-- The fence grows with every grant of the key, also across releases and
-- expiries, so a backend can refuse a request whose lease was lost to a newer
-- one. It lives beside the record because the record is deleted on release.
local st = redis.call("HGET", KEYS[1], "st")
if not st then
  local fence = redis.call("INCR", KEYS[2])
  redis.call("PEXPIRE", KEYS[2], ARGV[4])
  redis.call("HSET", KEYS[1], "st", "p", "tok", ARGV[1], "fp", ARGV[2], "fence", fence)
  redis.call("PEXPIRE", KEYS[1], ARGV[3])
  return {"acquired", fence}
end
if st == "p" then
  return {"in_progress", redis.call("HGET", KEYS[1], "fp"), redis.call("PTTL", KEYS[1])}
end
if st == "u" then
  return {"unknown", redis.call("HGET", KEYS[1], "fp"), redis.call("PTTL", KEYS[1])}
end
local v = redis.call("HMGET", KEYS[1], "fp", "status", "hdr", "body", "bs", "enc")
return {"completed", v[1], v[2], v[3], v[4], v[5], v[6] or ""}
