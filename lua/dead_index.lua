-- One page of the dead stream, reduced to what selecting and filtering need.
--
-- KEYS[1] the dead stream
-- ARGV[1] lower id   ARGV[2] upper id (either may be exclusive, '(' prefix)
-- ARGV[3] page size  ARGV[4] '1' for newest first (XREVRANGE), '0' for oldest first
--
-- Returns a flat list: id, reason_class, order_id, replays, id, ... The entries' envelopes
-- (most of their bytes) stay in Redis: scanning tens of thousands of entries to pick a few
-- costs a fraction of reading them whole. Positions follow dead_letter.lua's layout: its own
-- 8 pairs first, then the original entry's fields.
local stream, lower, upper, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local page
if ARGV[4] == '1' then
  page = redis.call('XREVRANGE', stream, upper, lower, 'COUNT', count)
else
  page = redis.call('XRANGE', stream, lower, upper, 'COUNT', count)
end
local out = {}
for _, entry in ipairs(page) do
  local f = entry[2]
  local reason_class, order_id, replays = '', '', '0'
  for i = 1, #f, 2 do
    if i < 17 then
      if f[i] == 'reason_class' then reason_class = f[i + 1] end
    elseif f[i] == 'order_id' then order_id = f[i + 1]
    elseif f[i] == 'replays' then replays = f[i + 1]
    end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = reason_class
  out[#out + 1] = order_id
  out[#out + 1] = replays
end
return out
