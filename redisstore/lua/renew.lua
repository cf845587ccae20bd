-- renew: extend the lease of an in-progress record, only for its owner.
-- The token is compared here, not in Go, so the check and the extension are
-- one atomic step. A lease that ran out is renewed too while the record is
-- still the owner's (no takeover happened): the request is alive after all.
--
-- KEYS[1]  record hash
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  key TTL in milliseconds (the hold, or the lease with takeover)
--
-- Returns 1 when extended, 0 when the token does not own an in-progress record.
local v = redis.call("HMGET", KEYS[1], "st", "tok")
if v[1] ~= "p" or v[2] ~= ARGV[1] then
  return 0
end
local t = redis.call("TIME")
redis.call("HSET", KEYS[1], "lx", string.format("%.0f", t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[2]))
redis.call("PEXPIRE", KEYS[1], ARGV[3])
return 1
