-- Settle applied receipts of one shard: acknowledge and delete them, and unlink the publish-once
-- keys of the events they finished, in one atomic call.
--
-- KEYS[1] the shard's receipts stream   KEYS[2..] publish-once keys to unlink (may be none)
-- ARGV[1] the receipts group            ARGV[2..] the receipts' stream ids
--
-- Called only after the statement that applied the receipts committed. Atomic, so a relay that
-- dies mid-way never leaves a receipt acknowledged but not deleted (the stream would keep it
-- for good) or deleted while still pending. Idempotent: settling again changes nothing.
-- Returns the number of receipts that were still pending.
local stream, group = KEYS[1], ARGV[1]
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local acked = redis.call('XACK', stream, group, unpack(ids))
redis.call('XDEL', stream, unpack(ids))
if #KEYS > 1 then
  local keys = {}
  for i = 2, #KEYS do keys[#keys + 1] = KEYS[i] end
  redis.call('UNLINK', unpack(keys))
end
return acked
