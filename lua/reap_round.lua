-- One reaper round on one shard, in one call: take the round's lock, list the entries that
-- used up their deliveries, and trim what every group acknowledged.
--
-- KEYS[1] the events stream   KEYS[2] the reaper lock   KEYS[3] the held set
-- ARGV[1] group               ARGV[2] consumer (the lock's owner)   ARGV[3] lock ms
-- ARGV[4] min idle ms of an exhausted entry   ARGV[5] max deliveries
-- ARGV[6] pending entries to examine at most   ARGV[7] where to start: '-' or '(<id>'
-- ARGV[8] the retention floor: the id '<now - retention ms>-0'
--
-- Only one replica reaps a shard per round: the lock is SET NX PX and left to expire (its
-- owner may go again before it does), so the replicas that lose it pay one call. The winner
-- lists the exhausted entries (pending, delivered `max deliveries` times or more, idle
-- `min idle` ms, not held: a held entry waits for its recipient's window, it is not failing);
-- the caller dead-letters each through dead_letter.lua, which checks all of that again. Trimming removes entries below every
-- group's last-delivered id and every group's oldest pending entry, older than the retention:
-- never a pending or undelivered one. A stream without our group yet is not trimmed at all
-- ("below every group" with no group of ours would drop every entry unread).
-- Returns {took the lock (0/1), exhausted ids, cursor, trimmed}; cursor is where the next
-- round starts ('-' when this one reached the end of the pending list).
local events, lock, held = KEYS[1], KEYS[2], KEYS[3]
local group, owner, lock_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local min_idle, max_deliveries, scan = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local start, floor = ARGV[7], ARGV[8]

if not redis.call('SET', lock, owner, 'NX', 'PX', lock_ms) and redis.call('GET', lock) ~= owner then
  return {0, {}, start, 0}
end

-- No stream yet, or none of our group: nothing was delivered, nothing to reap or trim.
local info = redis.pcall('XINFO', 'GROUPS', events)
if info.err then return {1, {}, '-', 0} end
local groups, ours = {}, false
for _, flat in ipairs(info) do
  local g = {}
  for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
  groups[#groups + 1] = g
  if g['name'] == group then ours = true end
end
if not ours then return {1, {}, '-', 0} end

local pending = redis.call('XPENDING', events, group, 'IDLE', min_idle, start, '+', scan)
local cursor = '-'
if #pending >= scan then cursor = '(' .. pending[#pending][1] end
local exhausted = {}
for _, p in ipairs(pending) do
  if p[4] >= max_deliveries and not redis.call('ZSCORE', held, p[1]) then
    exhausted[#exhausted + 1] = p[1]
  end
end

local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local lowest = floor
local function lower(id)
  local a_ms, a_seq = parts(id)
  local b_ms, b_seq = parts(lowest)
  if a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq) then lowest = id end
end
for _, g in ipairs(groups) do
  lower(g['last-delivered-id'])
  if tonumber(g['pending']) > 0 then
    local summary = redis.call('XPENDING', events, g['name'])
    if summary[2] then lower(summary[2]) end
  end
end
local trimmed = redis.call('XTRIM', events, 'MINID', '~', lowest)
return {1, exhausted, cursor, trimmed}
