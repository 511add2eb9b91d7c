-- Move one dead-letter entry back onto the events stream, with an audit record, atomically.
--
-- KEYS[1] the dead stream   KEYS[2] the events stream   KEYS[3] the audit stream
-- ARGV[1] dead entry id     ARGV[2] replay cap (entries replayed this many times are refused)
-- ARGV[3] force ('1' ignores the cap)   ARGV[4] now, ms   ARGV[5] who   ARGV[6] why
-- ARGV[7] audit stream max length (approximate trim)
--
-- The original fields are found by name, in either layout that
-- src/acme_runtime/deadletter_layout.py documents. In dead_letter.lua's layout (first field
-- dead_layout = '2') they are the fields that are not the dead letter's own, with the 'orig:' prefix of a reserved name removed. In the layout
-- before it (first field original_id) they are the fields after the first dead_at_ms, as
-- written: an old poison entry may repeat an own name. The original fields go back with
-- `replays` set to one more than before. dead_letter.lua copies it into the next dead entry,
-- so the cap holds across any number of die-and-replay rounds. A new XADD is a new entry id,
-- hence a fresh delivery count; the notifier's send ledger keeps an event already e-mailed
-- from being sent again.
--
-- Returns {status, new entry id or '', replays}; status is one of replayed, not_found,
-- capped, not_dead_letter (in neither layout), empty (no original fields).
local OWN = {dead_layout = true, original_id = true, reason_class = true, reason = true,
  last_error = true, deliveries = true, consumer = true, first_attempt_ms = true,
  dead_at_ms = true}
local ESCAPE = 'orig:'

local dead, events, audit = KEYS[1], KEYS[2], KEYS[3]
local id, cap, force, now = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]

local entry = redis.call('XRANGE', dead, id, id)[1]
if not entry then return {'not_found', '', 0} end
local f = entry[2]
local named = f[1] == 'dead_layout' and f[2] == '2'
if not named and f[1] ~= 'original_id' then return {'not_dead_letter', '', 0} end

-- Layout 1 only: still inside the dead letter's own fields (until dead_at_ms).
local in_own = not named
local reason_class, original, replays, event_id, order_id = '', {}, 0, '', ''
for i = 1, #f, 2 do
  local name, value = f[i], f[i + 1]
  local own = in_own
  if named then
    own = OWN[name]
    if not own and string.sub(name, 1, #ESCAPE) == ESCAPE then
      name = string.sub(name, #ESCAPE + 1)
    end
  elseif name == 'dead_at_ms' then
    in_own = false
  end
  if own then
    if name == 'reason_class' then reason_class = value end
  elseif name == 'replays' then
    replays = tonumber(value) or 0
  else
    original[#original + 1] = name
    original[#original + 1] = value
    if name == 'event_id' then event_id = value end
    if name == 'order_id' then order_id = value end
  end
end
if in_own then return {'not_dead_letter', '', 0} end
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
