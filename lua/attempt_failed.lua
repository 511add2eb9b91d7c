-- Record a failed delivery attempt of a pending entry, which stays pending for a retry.
--
-- KEYS[1] the events stream   KEYS[2] the receipts stream   KEYS[3] the last-error hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] entry id   ARGV[4] error text
-- ARGV[5] refund: '1' when the server itself was down (connection refused, 421, timeout) or
--         refused us rather than this e-mail
-- ARGV[6..] the attempt_failed receipt's field/value pairs
--
-- Keeps the error for the dead letter, tells the order service of the try, and, on a refund,
-- gives the delivery back (XCLAIM ... RETRYCOUNT n-1 JUSTID): an outage must not use up an
-- e-mail's retry budget, which is for failures of that e-mail. The circuit breaker is what
-- paces retries while the server is down. Only an entry this consumer still owns is refunded.
-- An entry no longer pending (acknowledged, dead-lettered, trimmed meanwhile) is left alone:
-- no last-error field is written for it (nothing would ever delete it) and no receipt, which
-- could only arrive after the entry's final one.
-- Returns the entry's delivery count after the call (0 if it is no longer pending).
local stream, receipts, errors = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local p = redis.call('XPENDING', stream, group, id, id, 1)
if not p[1] then return 0 end
redis.call('HSET', errors, id, ARGV[4])
redis.call('XADD', receipts, '*', unpack(ARGV, 6))
local deliveries = p[1][4]
if ARGV[5] == '1' and p[1][2] == consumer and deliveries > 1 then
  deliveries = deliveries - 1
  redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', deliveries, 'JUSTID')
end
return deliveries
