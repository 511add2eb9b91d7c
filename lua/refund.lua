-- Give back a delivery this consumer could not really attempt (its PostgreSQL or Redis failed
-- mid-way): an infrastructure outage must not use up an e-mail's retry budget.
--
-- KEYS[1] the events stream   ARGV[1] group   ARGV[2] consumer   ARGV[3] entry id
--
-- Only an entry this consumer still owns, delivered more than once, is touched (XCLAIM ...
-- RETRYCOUNT n-1 JUSTID, which also restarts its idle time, i.e. its backoff).
-- Returns the entry's delivery count after the call (0 if it is no longer pending).
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] then return 0 end
local deliveries = p[1][4]
if p[1][2] == ARGV[2] and deliveries > 1 then
  deliveries = deliveries - 1
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'RETRYCOUNT', deliveries, 'JUSTID')
end
return deliveries
