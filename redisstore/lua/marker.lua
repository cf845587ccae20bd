-- marker: write one store-reset marker, a hash with no TTL under the key
-- prefix (marker.go says why it exists). Only the health check writes
-- markers; the acquire script reads whether its slot's marker exists.
--
-- KEYS[1]  the marker
-- ARGV[1]  "create": write it with epoch ARGV[2] unless it exists (a new
--          store, or a slot of a reset primary whose markers are rebuilt)
--          "reset": the primary lost its records: a missing marker is
--          written with epoch ARGV[2] and the reset noted; an existing one
--          whose epoch is not ARGV[3] (another process rebuilt it, taking
--          the store for a new one, or this caller just wrote it) gets the
--          reset noted; one whose epoch is ARGV[3] (the caller's read was
--          stale) or that already notes a reset is left as it is. A note
--          holds until ARGV[5] ms from now: the acquire script refuses free
--          keys of the slot until then
--          "ack": an operator acknowledged the reset noted at ARGV[3] (ms):
--          the note (reset, until) is removed and the acknowledgement
--          recorded; why and was stay, so a process that saw the lost epoch
--          knows the reset it would note has been noted and acknowledged
-- ARGV[2]  epoch of a new marker (random, hex)
-- ARGV[3]  "reset": the epoch the caller last saw, "" none; "ack": the
--          reset time acknowledged
-- ARGV[4]  "reset": why, for operators
-- ARGV[5]  "reset": how long the note holds, ms (the retention)
-- ARGV[6]  "reset": when the reset was noted, ms, "" for now: the markers
--          of a primary's other slots carry the time of its first, so one
--          acknowledgement of that time clears them all
--
-- Returns the marker's fields as HGETALL does (empty: no marker):
--   epoch   random id, new with every marker written from nothing
--   born    when it was written, ms on this server's clock (TIME)
--   reset   when a reset was noted, ms; absent when none is outstanding
--   until   when that note stops holding, ms
--   why     why the last reset was noted
--   was     the epoch the noting process had seen before it ("" none)
--   acked   when the last reset was acknowledged, ms
local function now()
  local t = redis.call("TIME")
  return string.format("%.0f", t[1] * 1000 + math.floor(t[2] / 1000))
end

local epoch = redis.call("HGET", KEYS[1], "epoch")
if ARGV[1] == "create" then
  if not epoch then
    redis.call("HSET", KEYS[1], "epoch", ARGV[2], "born", now())
  end
elseif ARGV[1] == "reset" then
  local t = ARGV[6]
  if not t or t == "" then
    t = now()
  end
  local hold = string.format("%.0f", tonumber(t) + tonumber(ARGV[5]))
  if not epoch then
    redis.call("HSET", KEYS[1], "epoch", ARGV[2], "born", t, "reset", t, "until", hold, "why", ARGV[4], "was", ARGV[3])
  elseif epoch ~= ARGV[3] and redis.call("HEXISTS", KEYS[1], "reset") == 0 then
    redis.call("HSET", KEYS[1], "reset", t, "until", hold, "why", ARGV[4], "was", ARGV[3])
  end
elseif ARGV[1] == "ack" then
  if redis.call("HGET", KEYS[1], "reset") == ARGV[3] then
    redis.call("HDEL", KEYS[1], "reset", "until")
    redis.call("HSET", KEYS[1], "acked", now())
  end
else
  return redis.error_reply("ERR marker: unknown op " .. tostring(ARGV[1]))
end
return redis.call("HGETALL", KEYS[1])
