-- Move one dead-letter entry back onto the events stream, with an audit record, atomically.
--
-- KEYS[1] the dead stream   KEYS[2] the events stream   KEYS[3] the audit stream
-- ARGV[1] dead entry id     ARGV[2] replay cap (entries replayed this many times are refused)
-- ARGV[3] force ('1' ignores the cap)   ARGV[4] now, ms   ARGV[5] who   ARGV[6] why
-- ARGV[7] audit stream max length (approximate trim)
--
-- dead_letter.lua writes 8 pairs of its own first (original_id ... dead_at_ms), then the
-- original entry's fields; the split is by position, not by name, because a poison entry's
-- own fields may reuse any name. The original fields go back with `replays` set to one more
-- than before: dead_letter.lua copies it into the next dead entry, so the cap holds across
-- any number of die-and-replay rounds. A new XADD is a new entry id, hence a fresh delivery
-- count; the notifier's send ledger keeps an event already e-mailed from being sent again.
--
-- Returns {status, new entry id or '', replays}; status is one of replayed, not_found,
-- capped, not_dead_letter (not in dead_letter.lua's layout), empty (no original fields).
local dead, events, audit = KEYS[1], KEYS[2], KEYS[3]
local id, cap, force, now = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]

local entry = redis.call('XRANGE', dead, id, id)[1]
if not entry then return {'not_found', '', 0} end
local f = entry[2]
if f[1] ~= 'original_id' or #f < 16 then return {'not_dead_letter', '', 0} end

local reason_class = ''
for i = 1, 16, 2 do
  if f[i] == 'reason_class' then reason_class = f[i + 1] end
end
local original, replays, event_id, order_id = {}, 0, '', ''
for i = 17, #f, 2 do
  local name, value = f[i], f[i + 1]
  if name == 'replays' then
    replays = tonumber(value) or 0
  else
    original[#original + 1] = name
    original[#original + 1] = value
    if name == 'event_id' then event_id = value end
    if name == 'order_id' then order_id = value end
  end
end
if #original == 0 then return {'empty', '', replays} end
if replays >= cap and not force then return {'capped', '', replays} end

replays = replays + 1
original[#original + 1] = 'replays'
original[#original + 1] = tostring(replays)
local new_id = redis.call('XADD', events, '*', unpack(original))
redis.call('XDEL', dead, id)
redis.call('XADD', audit, 'MAXLEN', '~', ARGV[7], '*',
  'action', 'replay', 'at_ms', now, 'who', ARGV[5], 'why', ARGV[6], 'dead_id', id,
  'event_id', event_id, 'order_id', order_id, 'reason_class', reason_class,
  'replays', tostring(replays), 'new_id', new_id, 'forced', force and '1' or '0')
return {'replayed', new_id, replays}
