-- Claim the pending entries whose retry is due: idle longer than their backoff.
--
-- KEYS[1]  the events stream   KEYS[2] the last-error hash
-- KEYS[3]  the held set (entry id -> release time, ms; see hold.lua), optional
-- ARGV[1]  group            ARGV[2] consumer claiming
-- ARGV[3]  backoff base ms  ARGV[4] backoff cap ms   ARGV[5] jitter fraction (0..1)
-- ARGV[6]  max deliveries   ARGV[7] how many to claim at most
-- ARGV[8]  how many pending entries to examine at most
-- ARGV[9]  where to start examining: '-' or '(<id>' (the cursor the previous call returned)
-- ARGV[10] now, ms (needed with KEYS[3])
--
-- The backoff of an entry delivered n times is min(base * 2^(n-1), cap), stretched by up to
-- `jitter` using a fraction derived from the entry id, so entries spread out without a random
-- generator. Entries already delivered `max deliveries` times are left for the reaper.
-- A held entry (over its recipient's cap) is not claimed before its release time, and then is
-- claimed whatever its backoff and delivery count (holds gave their deliveries back) and
-- leaves the held set.
-- Returns {claimed, missing, cursor}: claimed = {{id, deliveries, {field, value, ...}}, ...};
-- missing = ids that were pending but whose entry had been trimmed or deleted (acknowledged
-- here, with their last-error field deleted, so they stop haunting the pending list); cursor = where the next call starts, so that
-- a long pending list is examined window by window instead of always from its head ('-' when
-- this call reached the end).
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local base, cap, jitter = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_deliveries, limit, scan = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local start = ARGV[9] or '-'
local held, now = KEYS[3], tonumber(ARGV[10])
local pending = redis.call('XPENDING', stream, group, 'IDLE', base, start, '+', scan)
local claimed, missing = {}, {}
local cursor = '-'
if #pending >= scan then cursor = '(' .. pending[#pending][1] end
local previous = nil
for _, p in ipairs(pending) do
  if #claimed >= limit then
    -- Stop before this entry: the next call starts with it.
    cursor = previous and ('(' .. previous) or start
    break
  end
  local id, idle, deliveries = p[1], p[3], p[4]
  local release = held and tonumber(redis.call('ZSCORE', held, id))
  local due = false
  local backoff = 0
  if release then
    due = release <= now
    if due then redis.call('ZREM', held, id) end
  elseif deliveries < max_deliveries then
    local ms = string.match(id, '^(%d+)')
    local fraction = (tonumber(string.sub(ms, -3)) or 0) / 1000
    backoff = math.min(base * 2 ^ (deliveries - 1), cap) * (1 + jitter * fraction)
    due = idle >= backoff
  end
  if due then
    local got = redis.call('XCLAIM', stream, group, consumer, math.floor(backoff), id)
    local entry = got[1]
    if entry and entry[2] then
      claimed[#claimed + 1] = {id, deliveries + 1, entry[2]}
    else
      redis.call('XACK', stream, group, id)
      redis.call('HDEL', KEYS[2], id)
      missing[#missing + 1] = id
    end
  end
  previous = id
end
return {claimed, missing, cursor}
