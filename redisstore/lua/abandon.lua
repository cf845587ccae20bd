-- abandon: the owner's request may have run, but no final response was seen.
-- Keep the key as "outcome unknown" for the hold period, so retries are
-- refused instead of run again, until an operator clears it or it expires.
--
-- KEYS[1]  record hash
-- ARGV[1]  owner token
-- ARGV[2]  hold period in milliseconds
-- ARGV[3]  the record's shard channel, for waiting duplicates (published
--          on only when one marked the record, field w)
--
-- Returns 1 when marked, 0 when the token does not own an in-progress record.
local v = redis.call("HMGET", KEYS[1], "st", "tok", "w")
if v[1] ~= "p" or v[2] ~= ARGV[1] then
  return 0
end
redis.call("HSET", KEYS[1], "st", "u")
redis.call("HDEL", KEYS[1], "tok")
redis.call("PEXPIRE", KEYS[1], ARGV[2])
if v[3] then
  -- pcall: an ACL without the channel (&prefix*) must not fail the write
  -- above; waiters then learn of it by their re-check.
  redis.pcall("SPUBLISH", ARGV[3], "u")
end
return 1
