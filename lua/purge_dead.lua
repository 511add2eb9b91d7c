-- Delete one dead-letter entry, with an audit record, atomically.
--
-- KEYS[1] the dead stream   KEYS[2] the audit stream
-- ARGV[1] dead entry id     ARGV[2] now, ms   ARGV[3] who   ARGV[4] why
-- ARGV[5] audit stream max length (approximate trim)
--
-- The audit record keeps the ids and the reason class, not the envelope: a purge is also how
-- personal data leaves the dead stream. Each field is the first of its name, as in
-- dead_index.lua, which reads both dead-letter layouts right
-- (src/acme_runtime/deadletter_layout.py). Returns 1 if this call deleted the entry, 0 if it
-- was not there.
local dead, audit, id = KEYS[1], KEYS[2], ARGV[1]
local entry = redis.call('XRANGE', dead, id, id)[1]
if not entry then return 0 end
local f = entry[2]
local wanted = {reason_class = false, event_id = false, order_id = false, replays = false}
for i = 1, #f, 2 do
  if wanted[f[i]] == false then wanted[f[i]] = f[i + 1] end
end
redis.call('XDEL', dead, id)
redis.call('XADD', audit, 'MAXLEN', '~', ARGV[5], '*',
  'action', 'purge', 'at_ms', ARGV[2], 'who', ARGV[3], 'why', ARGV[4], 'dead_id', id,
  'event_id', wanted.event_id or '', 'order_id', wanted.order_id or '',
  'reason_class', wanted.reason_class or '', 'replays', wanted.replays or '0')
return 1
