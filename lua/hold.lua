-- Hold a pending entry back until its recipient's window has room: no try used, no dead letter.
--
-- KEYS[1] the events stream   KEYS[2] the receipts stream   KEYS[3] the held set
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] entry id   ARGV[4] release at, ms
-- ARGV[5..] the held receipt's field/value pairs
--
-- The entry stays pending (it is never dropped): the held set (entry id -> release time)
-- keeps claim_due.lua from claiming it before then, and the delivery this hold took is given
-- back (XCLAIM ... RETRYCOUNT n-1 JUSTID, as refund.lua), so a hold never uses up the e-mail's
-- retry budget and the reaper never dead-letters it for max deliveries. The held receipt tells
-- the order service why (its timeline step `held`). Only an entry this consumer still owns is
-- held; one no longer pending (acknowledged, dead-lettered meanwhile) is left alone.
-- Returns the entry's delivery count after the call (0 if it is no longer pending).
local stream, receipts, held = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local p = redis.call('XPENDING', stream, group, id, id, 1)
if not p[1] or p[1][2] ~= consumer then return 0 end
redis.call('ZADD', held, tonumber(ARGV[4]), id)
redis.call('XADD', receipts, '*', unpack(ARGV, 5))
local deliveries = p[1][4]
if deliveries > 1 then
  deliveries = deliveries - 1
  redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', deliveries, 'JUSTID')
end
return deliveries
