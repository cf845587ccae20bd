-- acquire: take a free key for one owner, or report the record that holds it.
-- Reading and creating happen in one script so two requests can never both
-- see the key free, and the caller learns everything in one round trip.
--
-- KEYS[1]  record hash
-- ARGV[1]  owner token
-- ARGV[2]  request fingerprint (bytes)
-- ARGV[3]  lock TTL in milliseconds
--
-- Returns one of:
--   {"acquired"}                                     a new in-progress record is ours
--   {"in_progress", fp, pttl}                        another owner holds the key; pttl in ms
--   {"completed", fp, status, hdr, body, bs}         the stored response
local st = redis.call("HGET", KEYS[1], "st")
if not st then
  redis.call("HSET", KEYS[1], "st", "p", "tok", ARGV[1], "fp", ARGV[2])
  redis.call("PEXPIRE", KEYS[1], ARGV[3])
  return {"acquired"}
end
if st == "p" then
  return {"in_progress", redis.call("HGET", KEYS[1], "fp"), redis.call("PTTL", KEYS[1])}
end
local v = redis.call("HMGET", KEYS[1], "fp", "status", "hdr", "body", "bs")
return {"completed", v[1], v[2], v[3], v[4], v[5]}
