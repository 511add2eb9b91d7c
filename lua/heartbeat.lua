-- Keep a consumer's in-flight entries fresh, so no claimer mistakes a slow send for a crash.
--
-- KEYS[1]  the events stream
-- ARGV[1]  group   ARGV[2] consumer   ARGV[3..] entry ids in flight at this consumer
--
-- XCLAIM ... JUSTID resets an entry's idle time without counting a delivery. Only entries this
-- consumer still owns are touched: one a claimer has already taken is never taken back.
-- Returns how many entries were refreshed.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local refreshed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XCLAIM', stream, group, consumer, 0, ARGV[i], 'JUSTID')
    refreshed = refreshed + 1
  end
end
return refreshed
