-- replay_take: use a replay token once, and read the record it was issued
-- for, in one round trip. The token is deleted whatever follows: a second
-- use finds nothing.
--
-- KEYS[1]  record hash
-- KEYS[2]  token key (prefix{id}:replay:<random>)
--
-- Returns one of:
--   {"none"}                                          no such token (never issued, used or expired)
--   {"gone"}                                          the record it was issued for is gone
--   {"completed", fp, status, hdr, body, bs, enc}     the stored response
local want = redis.call("GET", KEYS[2])
if not want then
  return {"none"}
end
redis.call("DEL", KEYS[2])
local v = redis.call("HMGET", KEYS[1], "st", "fp", "status", "hdr", "body", "bs", "enc", "ctk")
if v[1] ~= "c" or v[8] ~= want then
  return {"gone"}
end
return {"completed", v[2], v[3], v[4], v[5], v[6], v[7] or ""}
