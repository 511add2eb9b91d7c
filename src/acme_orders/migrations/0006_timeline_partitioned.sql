-- Partitioning order_timeline, step 3 of 3: the swap, metadata only.
--
-- The table becomes `order_timeline_floor`, the partition FROM (MINVALUE) TO (the bound of
-- step 1); a RANGE-partitioned `order_timeline` takes its name; the janitor creates the
-- partitions above the bound and drops whole partitions past ACME_TIMELINE_RETENTION_S.
-- No row moves and nothing is scanned: the indexes and the CHECK of steps 1-2 are reused.
--
-- A partitioned table's unique keys must include its partition key: the primary key becomes
-- (order_id, seq) and a receipt's idempotency (order_id, source_id). A receipt belongs to one
-- order, so that is as strong as source_id alone, and `ON CONFLICT` names both columns.
-- `seq` is a plain sequence instead of an identity column (partitioned tables take identity
-- columns only from PostgreSQL 17 on); it goes on from where the old identity stopped.
DO $$
DECLARE
    bound text;
    next_seq bigint := nextval(pg_get_serial_sequence('order_timeline', 'seq'));
BEGIN
    SELECT substring(pg_get_constraintdef(oid) FROM '''([0-9a-f-]{36})''') INTO STRICT bound
    FROM pg_constraint
    WHERE conrelid = 'order_timeline'::regclass AND conname = 'order_timeline_partition_bound';

    ALTER TABLE order_timeline RENAME TO order_timeline_floor;
    ALTER TABLE order_timeline_floor ALTER COLUMN seq DROP IDENTITY;
    ALTER TABLE order_timeline_floor DROP CONSTRAINT order_timeline_pkey;
    ALTER TABLE order_timeline_floor
        ADD CONSTRAINT order_timeline_floor_pkey PRIMARY KEY USING INDEX order_timeline_floor_pkey;
    DROP INDEX order_timeline_order;
    DROP INDEX order_timeline_source;

    EXECUTE format('CREATE SEQUENCE order_timeline_seq_seq START WITH %s', next_seq);
    -- What happened to an order, in order (0001_orders_outbox.sql, 0002): the columns of the
    -- table it replaces, exactly, as ATTACH requires. All rows of an order share its
    -- partition: a look-up by order_id reads one.
    CREATE TABLE order_timeline (LIKE order_timeline_floor) PARTITION BY RANGE (order_id);
    ALTER TABLE order_timeline ADD PRIMARY KEY (order_id, seq);
    ALTER TABLE order_timeline ALTER COLUMN seq SET DEFAULT nextval('order_timeline_seq_seq');
    ALTER SEQUENCE order_timeline_seq_seq OWNED BY order_timeline.seq;
    CREATE UNIQUE INDEX order_timeline_source ON order_timeline (order_id, source_id)
        WHERE source_id IS NOT NULL;

    EXECUTE format(
        'ALTER TABLE order_timeline ATTACH PARTITION order_timeline_floor'
        ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    -- The partition bound says the same from now on.
    ALTER TABLE order_timeline_floor DROP CONSTRAINT order_timeline_partition_bound;
END $$;
