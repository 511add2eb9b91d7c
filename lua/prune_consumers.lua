-- Delete the consumers of a group that left for good: no pending entries, idle for long.
--
-- KEYS[1] the stream   ARGV[1] group   ARGV[2] minimum idle time, ms   ARGV[3] a consumer to
-- keep whatever happens (the caller itself; '' for none)   ARGV[4] only this consumer ('' for
-- any): a replica shutting down removes its own name once its work is done
--
-- Every rollout and scale-down leaves its pods' consumer names behind; without pruning the
-- group's consumer list only grows. A consumer that still owns pending entries is never
-- deleted (DELCONSUMER would drop its entries from the pending list, losing them), and the
-- check and the delete are one atomic step, so it cannot pick up an entry in between.
-- Returns the names deleted.
local deleted = {}
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return deleted end
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  local wanted = ARGV[4] == '' or info['name'] == ARGV[4]
  if wanted and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2])
      and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted[#deleted + 1] = info['name']
  end
end
return deleted
