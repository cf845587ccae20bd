-- inspect: an operator's view of one key, without its body (which may hold
-- personal data) or owner token (which would allow taking over the lock).
--
-- KEYS[1]  record hash
-- KEYS[2]  fence counter
--
-- Returns {st, status, bs, body length, pttl, fence, fence counter, lx, ct,
-- sc, now, ua, ctk}; st is false (nil) when there is no record; lx (lease end) and ct
-- (created) are Redis-clock milliseconds like now; ua is Envoy's upstream
-- attempt count of a completed record that Envoy retried, else false; a
-- completed record keeps its fence in ctk, after the token digest
-- (complete.lua), and has no field fence unless an earlier version wrote it.
local v = redis.call("HMGET", KEYS[1], "st", "status", "bs", "fence", "lx", "ct", "sc", "ua", "ctk")
local t = redis.call("TIME")
return {v[1], v[2], v[3], redis.call("HSTRLEN", KEYS[1], "body"),
  redis.call("PTTL", KEYS[1]), v[4], redis.call("GET", KEYS[2]), v[5], v[6], v[7],
  string.format("%.0f", t[1] * 1000 + math.floor(t[2] / 1000)), v[8], v[9]}
