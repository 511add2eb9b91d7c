-- Move one pending entry to the dead-letter stream: XADD to the dead stream + XACK, atomically.
--
-- KEYS[1] the events stream   KEYS[2] the dead stream   KEYS[3] the receipts stream
-- KEYS[4] the last-error hash
-- ARGV[1] group   ARGV[2] entry id   ARGV[3] reason class   ARGV[4] reason
-- ARGV[5] minimum delivery count required (0: dead-letter now, e.g. a permanent failure;
--         max deliveries: only if the entry really used up its budget, for the reaper)
-- ARGV[6] now, ms   ARGV[7] send a receipt ('1' / '0': poison entries may have no order id)
--
-- The dead entry's layout, documented in src/acme_runtime/deadletter_layout.py: first the
-- dead letter's own fields, dead_layout ('2'), original_id, reason_class, reason, last_error,
-- deliveries, consumer (last owner), first_attempt_ms (the original entry's id time),
-- dead_at_ms; then the original entry's fields. No name occurs twice, so every reader finds a
-- field by its name. A poison entry may use any name: an original field named like an own
-- field, or starting with 'orig:', is stored as 'orig:' .. name, and the readers remove the
-- prefix again. Safe to run from several reapers at once: an entry no longer pending (already
-- moved, acknowledged) is left alone. Returns the dead entry's id, or false.
local OWN = {dead_layout = true, original_id = true, reason_class = true, reason = true,
  last_error = true, deliveries = true, consumer = true, first_attempt_ms = true,
  dead_at_ms = true}
local ESCAPE = 'orig:'

local stream, dead, receipts, errors = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, id = ARGV[1], ARGV[2]
local p = redis.call('XPENDING', stream, group, id, id, 1)
if not p[1] then return false end
local owner, deliveries = p[1][2], p[1][4]
if deliveries < tonumber(ARGV[5]) then return false end

local last_error = redis.call('HGET', errors, id) or ''
local fields = {'dead_layout', '2', 'original_id', id, 'reason_class', ARGV[3],
  'reason', ARGV[4], 'last_error', last_error, 'deliveries', deliveries, 'consumer', owner,
  'first_attempt_ms', string.match(id, '^(%d+)'), 'dead_at_ms', ARGV[6]}
local order_id, event_id = '', ''
local entry = redis.call('XRANGE', stream, id, id)[1]
if entry then
  local original = entry[2]
  for i = 1, #original, 2 do
    local name, value = original[i], original[i + 1]
    if name == 'order_id' then order_id = value end
    if name == 'event_id' then event_id = value end
    if OWN[name] or string.sub(name, 1, #ESCAPE) == ESCAPE then name = ESCAPE .. name end
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
local dead_id = redis.call('XADD', dead, '*', unpack(fields))
redis.call('XACK', stream, group, id)
redis.call('HDEL', errors, id)
if ARGV[7] == '1' and order_id ~= '' then
  redis.call('XADD', receipts, '*', 'type', 'dead', 'event_id', event_id, 'order_id', order_id,
    'at_ms', ARGV[6], 'attempts', deliveries, 'consumer', owner, 'reason_class', ARGV[3],
    'detail', ARGV[4])
end
return dead_id
