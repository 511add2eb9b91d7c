-- Publish an event to a stream at most once, whoever asks and however often.
--
-- KEYS[1]  the stream
-- KEYS[2]  the event's dedupe key ({acme}:published:<event_id>)
-- ARGV[1]  time to keep the dedupe key, in milliseconds
-- ARGV[2..] the entry's field/value pairs
--
-- Returns {1, id} when this call added the entry, {0, id} when the event was already published
-- (id is then the entry id of the first publish). The GET, XADD and SET run atomically, so two
-- relays, or a relay and the API's fast path, can never both add the same event.
local existing = redis.call('GET', KEYS[2])
if existing then
  return {0, existing}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
