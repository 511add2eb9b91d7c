-- Count the entries a consumer group has not been delivered yet, up to a cap.
--
-- KEYS[1] the stream   ARGV[1] the group's last-delivered-id   ARGV[2] cap
--
-- For Redis < 7, whose XINFO GROUPS has no `lag` field. Runs inside Redis so no entry crosses
-- the network, and pages through the stream 1,000 entries at a time so that even a huge
-- backlog never holds more than one page in memory; the cap bounds the time Redis is busy.
-- Returns {count, capped (0/1)}.
local cap = tonumber(ARGV[2])
local page = 1000
local start = '(' .. ARGV[1]
local n = 0
while n < cap do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(page, cap - n))
  n = n + #entries
  if #entries < page then break end
  start = '(' .. entries[#entries][1]
end
return {n, n >= cap and 1 or 0}
