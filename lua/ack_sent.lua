-- Acknowledge an entry whose e-mail was accepted, and tell the order service, atomically.
--
-- KEYS[1]  the events stream   KEYS[2] the receipts stream   KEYS[3] the last-error hash
-- ARGV[1]  group   ARGV[2] entry id
-- ARGV[3]  '1' when SMTP accepted this entry's e-mail just now, '0' when the send ledger
--          already knew it (a redelivery acknowledged without an e-mail)
-- ARGV[4..] the receipt's field/value pairs
--
-- A redelivery's receipt is added only by the call that actually acknowledged the entry, so
-- two replicas racing on a re-delivered entry send no second receipt. An e-mail accepted just
-- now is always reported, pending or not: if the entry was dead-lettered meanwhile (its
-- heartbeat stalled through a last attempt and the reaper took it), the order must still learn
-- that its e-mail went out, and `sent` outranks `dead` on the order service's side.
-- Returns 1 if this call acknowledged the entry, 0 if it was no longer pending.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('HDEL', KEYS[3], ARGV[2])
end
if acked == 1 or ARGV[3] == '1' then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
end
return acked
