-- The shard an event was first published on (ACME_STREAM_SHARDS, acme_runtime.channels), so a
-- re-drive goes back to that shard's stream and publish-once key even after the number of
-- shards changed: a re-drive to another shard would put a second copy of an event still in
-- flight on the stream. NULL until the event is first published. Adding a nullable column
-- without a default rewrites nothing.
ALTER TABLE outbox ADD COLUMN shard smallint;
