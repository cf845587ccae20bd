-- renew: extend the lock of an in-progress record, only for its owner.
-- The token is compared here, not in Go, so the check and the extension are
-- one atomic step: a lease that expired and was taken by another request is
-- never extended for the old owner.
--
-- KEYS[1]  record hash
-- ARGV[1]  owner token
-- ARGV[2]  lock TTL in milliseconds
--
-- Returns 1 when extended, 0 when the token does not own an in-progress record.
local v = redis.call("HMGET", KEYS[1], "st", "tok")
if v[1] == "p" and v[2] == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
return 0
