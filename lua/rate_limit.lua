-- Take one request from a caller's token bucket, shared by every API replica (GCRA).
--
-- KEYS[1] the caller's bucket, e.g. {acme}:ratelimit:key:<key id>
-- ARGV[1] emission interval, ms (1000 / the sustained rate per second)
-- ARGV[2] burst: requests a full bucket lets through at once (>= 1)
--
-- The bucket is one number, its theoretical arrival time (TAT, ms): when the bucket would be
-- full again. A request is allowed when TAT + interval - burst * interval <= now, and then moves
-- TAT on by one interval. Time is Redis's own clock (TIME), so replicas whose clocks drift
-- still share one bucket; the key expires on its own when the bucket is full again, so idle
-- callers cost nothing.
-- Returns {allowed (1/0), remaining requests now, retry after ms (0 when allowed),
--          ms until the bucket is full again}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - tolerance > now then
  return {0, 0, math.ceil(new_tat - tolerance - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now))
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, math.ceil(new_tat - now)}
