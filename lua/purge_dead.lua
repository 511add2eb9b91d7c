-- Delete one dead-letter entry, with an audit record, atomically.
--
-- KEYS[1] the dead stream   KEYS[2] the audit stream
-- ARGV[1] dead entry id     ARGV[2] now, ms   ARGV[3] who   ARGV[4] why
-- ARGV[5] audit stream max length (approximate trim)
--
-- The audit record keeps the ids and the reason class, not the envelope: a purge is also how
-- personal data leaves the dead stream. As in replay_dead.lua, the first 8 pairs are
-- dead_letter.lua's own and the rest are the original entry's. Returns 1 if this call deleted
-- the entry, 0 if it was not there.
local dead, audit, id = KEYS[1], KEYS[2], ARGV[1]
local entry = redis.call('XRANGE', dead, id, id)[1]
if not entry then return 0 end
local f = entry[2]
local reason_class, event_id, order_id, replays = '', '', '', '0'
for i = 1, #f, 2 do
  local name, value = f[i], f[i + 1]
  if i < 17 then
    if name == 'reason_class' then reason_class = value end
  elseif name == 'event_id' then event_id = value
  elseif name == 'order_id' then order_id = value
  elseif name == 'replays' then replays = value
  end
end
redis.call('XDEL', dead, id)
redis.call('XADD', audit, 'MAXLEN', '~', ARGV[5], '*',
  'action', 'purge', 'at_ms', ARGV[2], 'who', ARGV[3], 'why', ARGV[4], 'dead_id', id,
  'event_id', event_id, 'order_id', order_id, 'reason_class', reason_class,
  'replays', replays)
return 1
