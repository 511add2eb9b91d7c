-- The oldest dead entries the archiver must move out of the dead stream, read whole.
--
-- KEYS[1] the dead stream
-- ARGV[1] most entries the stream keeps   ARGV[2] age bound: entries with an id below this one
-- ('<ms>-0') are too old   ARGV[3] batch size
--
-- Returns, oldest first and at most ARGV[3], every entry over the count bound and then every
-- entry older than the age bound, as XRANGE replies ({id, {name, value, ...}}). The fields
-- are exactly as written (redis-py would turn them into a dict): a poison entry's names and
-- values may be any bytes, and an entry in the layout before dead_layout '2'
-- (src/acme_runtime/deadletter_layout.py) may repeat a name. Reads only.
local dead, batch = KEYS[1], tonumber(ARGV[3])
local over = redis.call('XLEN', dead) - tonumber(ARGV[1])
local out = {}
if over > 0 then
  out = redis.call('XRANGE', dead, '-', '+', 'COUNT', math.min(over, batch))
end
if #out < batch then
  local lower = '-'
  if #out > 0 then lower = '(' .. out[#out][1] end
  local aged = redis.call('XRANGE', dead, lower, '(' .. ARGV[2], 'COUNT', batch - #out)
  for _, entry in ipairs(aged) do out[#out + 1] = entry end
end
return out
