-- One page of the dead stream, reduced to what selecting and filtering need.
--
-- KEYS[1] the dead stream
-- ARGV[1] lower id   ARGV[2] upper id (either may be exclusive, '(' prefix)
-- ARGV[3] page size  ARGV[4] '1' for newest first (XREVRANGE), '0' for oldest first
--
-- Returns a flat list: id, reason_class, order_id, replays, id, ... The entries' envelopes
-- (most of their bytes) stay in Redis: scanning tens of thousands of entries to pick a few
-- costs a fraction of reading them whole. Each field is the first of its name: in
-- dead_letter.lua's layout (src/acme_runtime/deadletter_layout.py) no name occurs twice, and
-- in the layout before it the dead letter's own fields come first, so its reason_class wins
-- over an original field of the same name.
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
  local wanted = {reason_class = false, order_id = false, replays = false}
  for i = 1, #f, 2 do
    if wanted[f[i]] == false then wanted[f[i]] = f[i + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = wanted.reason_class or ''
  out[#out + 1] = wanted.order_id or ''
  out[#out + 1] = wanted.replays or '0'
end
return out
