-- Move one pending entry to the dead-letter stream: XADD to the dead stream + XACK, atomically.
--
-- KEYS[1] the events stream   KEYS[2] the dead stream   KEYS[3] the receipts stream
-- KEYS[4] the last-error hash
-- ARGV[1] group   ARGV[2] entry id   ARGV[3] reason class   ARGV[4] reason
-- ARGV[5] minimum delivery count required (0: dead-letter now, e.g. a permanent failure;
--         max deliveries: only if the entry really used up its budget, for the reaper)
-- ARGV[6] now, ms   ARGV[7] send a receipt ('1' / '0': poison entries may have no order id)
--
-- The dead entry keeps the original fields, plus: original_id, reason_class, reason,
-- last_error, deliveries, consumer (last owner), first_attempt_ms (the original entry's id time),
-- dead_at_ms. Safe to run from several reapers at once: an entry no longer pending (already
-- moved, acknowledged) is left alone. Returns the dead entry's id, or false.
local stream, dead, receipts, errors = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, id = ARGV[1], ARGV[2]
local p = redis.call('XPENDING', stream, group, id, id, 1)
if not p[1] then return false end
local owner, deliveries = p[1][2], p[1][4]
if deliveries < tonumber(ARGV[5]) then return false end

local fields = {}
local entry = redis.call('XRANGE', stream, id, id)
local order_id, event_id = '', ''
if entry[1] then
  fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'order_id' then order_id = fields[i + 1] end
    if fields[i] == 'event_id' then event_id = fields[i + 1] end
  end
end
local last_error = redis.call('HGET', errors, id) or ''
local dead_id = redis.call('XADD', dead, '*',
  'original_id', id, 'reason_class', ARGV[3], 'reason', ARGV[4], 'last_error', last_error,
  'deliveries', deliveries, 'consumer', owner, 'first_attempt_ms', string.match(id, '^(%d+)'),
  'dead_at_ms', ARGV[6], unpack(fields))
redis.call('XACK', stream, group, id)
redis.call('HDEL', errors, id)
if ARGV[7] == '1' and order_id ~= '' then
  redis.call('XADD', receipts, '*', 'type', 'dead', 'event_id', event_id, 'order_id', order_id,
    'at_ms', ARGV[6], 'attempts', deliveries, 'consumer', owner, 'reason_class', ARGV[3],
    'detail', ARGV[4])
end
return dead_id
