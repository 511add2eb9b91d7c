-- Count a stream's entries after a given id, up to a cap: a consumer group's lag on Redis
-- versions whose XINFO GROUPS has no `lag` field (before 7.0).
--
-- KEYS[1] the stream   ARGV[1] the id to count after (exclusive)   ARGV[2] the cap
--
-- Pages through XRANGE inside the server, so only the number crosses the network, and stops
-- at the cap, so a huge backlog costs at most `cap` entries of work. Returns the count.
local stream, after, cap = KEYS[1], ARGV[1], tonumber(ARGV[2])
local count = 0
while count < cap do
  local page = redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', math.min(1000, cap - count))
  if #page == 0 then break end
  count = count + #page
  after = page[#page][1]
end
return count
