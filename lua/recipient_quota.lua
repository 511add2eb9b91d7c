-- Count a confirmation e-mail against its recipient's cap per window, or say it must be held.
--
-- KEYS[1] this window's counts, {acme}:notify:recipients:<window start, ms>
-- KEYS[2] the previous window's counts
-- ARGV[1] now, ms   ARGV[2] window, ms   ARGV[3] the cap (e-mails per window)
-- ARGV[4] the recipient's field (a 64-bit hash of the address)   ARGV[5] this window's start, ms
--
-- A sliding-window counter: one hash per fixed window, field = recipient, value = e-mails let
-- through. The estimate over the last window is the previous window's count, weighted by the
-- share of it still inside the sliding window, plus this window's count. Two keys whatever
-- the number of recipients, each expiring two windows after it was last written: Redis keeps
-- no key per recipient and nothing per order (issue 17: bounded storage), at the price of an
-- estimate instead of an exact log (it assumes the previous window's e-mails were spread
-- evenly). The caller counts an event once: on its first delivery (a retry after a transient
-- failure does not count again) and on its release after a hold.
-- Returns {allowed (1/0), estimated e-mails in the window, release at (ms; 0 when allowed)}:
-- a held e-mail is released when the estimate falls below the cap.
local now, window, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local field, start = ARGV[4], tonumber(ARGV[5])
local cur = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local prev = tonumber(redis.call('HGET', KEYS[2], field) or '0')
local estimate = prev * (window - (now - start)) / window + cur
if estimate >= cap then
  local release
  if cur >= cap then
    -- Next window: `cur` becomes the previous window's count and must fade below the cap.
    release = start + window + math.ceil(window * (1 - cap / cur))
  else
    release = start + math.ceil(window * (1 - (cap - cur) / prev))
  end
  return {0, math.floor(estimate), math.max(release, now + 1)}
end
redis.call('HINCRBY', KEYS[1], field, 1)
redis.call('PEXPIRE', KEYS[1], 2 * window)
return {1, math.floor(estimate) + 1, 0}
