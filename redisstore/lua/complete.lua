-- complete: replace the owner's in-progress record by the stored response.
-- A completed record is never overwritten: once st is "c", or another owner
-- holds the key, nothing is written. An owner whose lease ran out may still
-- complete while nobody took the key over: its response is the truth, and
-- turns an unknown outcome into a replayable one.
--
-- KEYS[1]  record hash
-- ARGV[1]  owner token
-- ARGV[2]  retention in milliseconds
-- ARGV[3]  fingerprint (bytes)
-- ARGV[4]  HTTP status
-- ARGV[5]  encoded headers (opaque here)
-- ARGV[6]  body (bytes; empty when not stored)
-- ARGV[7]  "1" body stored, "0" too large to store, "i" the body never ended,
--          "t" the response ended with trailers, "s" it was seen in full
--          but not stored before its lease ended (status only; opaque
--          here, as every code is)
-- ARGV[8]  id of the key that sealed hdr and body, "" when stored plain
-- ARGV[9]  the record's shard channel: duplicates waiting for the key
--          (--in-progress=wait, which marks the record with field w) hear
--          of the completion there
-- ARGV[10] Envoy's upstream attempt count when Envoy retried the request
--          (above 1), else "": kept as field ua for operators (inspect); no
--          other script reads it, so records stay readable both ways
--          between versions with and without it
--
-- Returns 1 when written, 2 when this token completed the record before
-- (a retry of a completion whose reply was lost, or that waits for
-- replicas: the completed record keeps a digest of its owner's token, ctk,
-- for that; never the token itself), 0 when the token does not own the
-- record.
--
-- Fields cost memory, most once the hash is over hash-max-listpack-value
-- (64 bytes: most responses) and each is an entry of a hash table. So the
-- fence of the grant, for operators only, follows the digest in ctk
-- ("<sha1 hex>:<fence>") instead of a field of its own (records of the
-- previous version: the digest alone, and field fence; both are read),
-- and enc and ua are written only when set (every reader takes an absent
-- enc for "", as records from before encryption have none). Seven fields
-- instead of nine: 224 bytes less per record on Redis 7.0, 123 on Valkey
-- 8.1 (docs/capacity.md).
local v = redis.call("HMGET", KEYS[1], "st", "tok", "fence", "w", "ctk")
local digest = redis.sha1hex(ARGV[1])
if v[1] == "c" and v[5] and string.sub(v[5], 1, 40) == digest then
  return 2
end
if v[1] ~= "p" or v[2] ~= ARGV[1] then
  return 0
end
redis.call("DEL", KEYS[1])
local f = {"st", "c", "ctk", digest .. ":" .. (v[3] or "0"), "fp", ARGV[3], "status", ARGV[4],
  "hdr", ARGV[5], "body", ARGV[6], "bs", ARGV[7]}
if ARGV[8] ~= "" then
  f[#f + 1], f[#f + 2] = "enc", ARGV[8]
end
if ARGV[10] and ARGV[10] ~= "" then
  f[#f + 1], f[#f + 2] = "ua", ARGV[10]
end
redis.call("HSET", KEYS[1], unpack(f))
redis.call("PEXPIRE", KEYS[1], ARGV[2])
if v[4] then
  -- pcall: an ACL without the channel (&prefix*) must not fail the write
  -- above; waiters then learn of it by their re-check.
  redis.pcall("SPUBLISH", ARGV[9], "c")
end
return 1
