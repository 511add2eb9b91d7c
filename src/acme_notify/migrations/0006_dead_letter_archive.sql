-- The archive of the dead stream ({acme}:dead, docs/adr/0006-dead-letter-stream-and-replay.md):
-- dead letters the archiver (src/acme_notify/archiver.py) moved out of Redis because the stream
-- was over ACME_DEAD_MAX_ENTRIES or they were older than ACME_DEAD_RETENTION_S. `acme dead`
-- reads, replays and purges them like the stream's; rows older than
-- ACME_DEAD_ARCHIVE_RETENTION_S are deleted. A new table that the previous release ignores:
-- safe to run before a rolling deploy.
CREATE TABLE notify.dead_letters (
    -- The entry's id in the dead stream; (dead_at, dead_seq) sorts as the stream does.
    dead_id      text        PRIMARY KEY,
    dead_at      timestamptz NOT NULL,
    dead_seq     bigint      NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    -- Read from the entry (acme_runtime/deadletter_layout.py) for filtering; may be empty.
    reason_class text        NOT NULL,
    order_id     text,
    event_id     text,
    replays      integer     NOT NULL DEFAULT 0,
    -- The whole entry as the stream held it, field by field and in order: a poison entry's
    -- names and values may be any bytes, and a layout-1 entry may repeat a name.
    names        bytea[]     NOT NULL,
    vals         bytea[]     NOT NULL,
    CONSTRAINT dead_letters_pairs CHECK (cardinality(names) = cardinality(vals))
);
CREATE INDEX dead_letters_by_time ON notify.dead_letters (dead_at, dead_seq);
CREATE INDEX dead_letters_by_reason ON notify.dead_letters (reason_class, dead_at, dead_seq);
