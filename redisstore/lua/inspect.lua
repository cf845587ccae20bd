-- inspect: an operator's view of one key, without its body (which may hold
-- personal data) or owner token (which would allow taking over the lock).
--
-- KEYS[1]  record hash
-- KEYS[2]  fence counter
--
-- Returns {st, status, bs, body length, pttl, fence, fence counter}; st is
-- false (nil) when there is no record.
local v = redis.call("HMGET", KEYS[1], "st", "status", "bs", "fence")
return {v[1], v[2], v[3], redis.call("HSTRLEN", KEYS[1], "body"),
  redis.call("PTTL", KEYS[1]), v[4], redis.call("GET", KEYS[2])}
