-- Remove archived entries from the dead stream: the archiver's second step, run once
-- PostgreSQL has committed their rows (src/acme_notify/archiver.py).
--
-- KEYS[1] the dead stream   KEYS[2] the archiver's lock
-- ARGV[1] the caller's lock token   ARGV[2] the lock's time to live, ms   ARGV[3..] dead ids
--
-- Runs only while the caller still holds the lock (the key holds its token), and then extends
-- it. Since the caller read the stream after taking the lock, no other archiver has removed
-- anything in between: an id that is no longer there was replayed or purged by an operator
-- meanwhile, and the caller deletes its archive row again, so each entry ends in exactly one
-- place. XDELs only the ids still there and returns them (a list, possibly empty); returns
-- false, touching nothing, when the lock is not the caller's any more.
local dead, lock = KEYS[1], KEYS[2]
if redis.call('GET', lock) ~= ARGV[1] then return false end
local deleted = {}
for i = 3, #ARGV do
  if redis.call('XDEL', dead, ARGV[i]) == 1 then deleted[#deleted + 1] = ARGV[i] end
end
redis.call('PEXPIRE', lock, ARGV[2])
return deleted
