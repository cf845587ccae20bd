-- release: delete an in-progress record, only for its owner, so a retry need
-- not wait for the lock to expire. A completed record is never deleted.
--
-- KEYS[1]  record hash
-- ARGV[1]  owner token
-- ARGV[2]  the record's shard channel, for waiting duplicates (published
--          on only when one marked the record, field w)
--
-- Returns 1 when deleted, 0 when the token does not own an in-progress record.
local v = redis.call("HMGET", KEYS[1], "st", "tok", "w")
if v[1] == "p" and v[2] == ARGV[1] then
  redis.call("DEL", KEYS[1])
  if v[3] then
    -- pcall: an ACL without the channel (&prefix*) must not fail the
    -- delete above; waiters then learn of it by their re-check.
    redis.pcall("SPUBLISH", ARGV[2], "r")
  end
  return 1
end
return 0
