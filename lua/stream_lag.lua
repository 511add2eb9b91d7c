-- Count the entries a consumer group has not been delivered yet, up to a cap.
--
-- KEYS[1] the stream   ARGV[1] the group's last-delivered-id   ARGV[2] cap
--
-- For Redis < 7, whose XINFO GROUPS has no `lag` field. Runs inside Redis so no entry crosses
-- the network; the cap bounds the work (and the time Redis is busy) when the backlog is huge.
-- Returns {count, capped (0/1)}.
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local n = #entries
return {n, n >= tonumber(ARGV[2]) and 1 or 0}
