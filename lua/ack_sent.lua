-- Acknowledge an entry whose e-mail was accepted, and tell the order service, atomically.
--
-- KEYS[1]  the events stream   KEYS[2] the receipts stream   KEYS[3] the last-error hash
-- ARGV[1]  group   ARGV[2] entry id   ARGV[3..] the receipt's field/value pairs
--
-- The receipt is added only by the call that actually acknowledged the entry, so a second
-- acknowledgement (two replicas racing on a re-delivered entry) sends no second receipt.
-- Returns 1 if this call acknowledged the entry, 0 if it was no longer pending.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return acked
