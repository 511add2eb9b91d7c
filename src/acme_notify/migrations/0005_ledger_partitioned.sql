-- Partitioning notify.sent_ledger, step 3 of 3: the swap, metadata only.
--
-- The table becomes `notify.sent_ledger_floor`, the partition FROM (MINVALUE) TO (the bound of
-- step 1), and a partitioned `notify.sent_ledger` takes its name. The partition key is the
-- primary key itself, so event_id stays unique across every partition: the ledger refuses a
-- second row for an event exactly as before. The ledger janitor creates partitions ahead and
-- drops whole ones past ACME_LEDGER_RETENTION_S.
DO $$
DECLARE
    bound text;
BEGIN
    SELECT substring(pg_get_constraintdef(oid) FROM '''([0-9a-f-]{36})''') INTO STRICT bound
    FROM pg_constraint
    WHERE conrelid = 'notify.sent_ledger'::regclass AND conname = 'sent_ledger_partition_bound';

    ALTER TABLE notify.sent_ledger RENAME TO sent_ledger_floor;
    ALTER TABLE notify.sent_ledger_floor RENAME CONSTRAINT sent_ledger_pkey
        TO sent_ledger_floor_pkey;
    ALTER INDEX notify.sent_ledger_sent_at RENAME TO sent_ledger_floor_sent_at;

    -- The columns of the table it replaces, exactly (0001_send_ledger.sql, 0002): ATTACH
    -- requires the same ones.
    CREATE TABLE notify.sent_ledger (LIKE notify.sent_ledger_floor INCLUDING DEFAULTS)
        PARTITION BY RANGE (event_id);
    ALTER TABLE notify.sent_ledger ADD PRIMARY KEY (event_id);
    CREATE INDEX sent_ledger_sent_at ON notify.sent_ledger (sent_at);

    EXECUTE format(
        'ALTER TABLE notify.sent_ledger ATTACH PARTITION notify.sent_ledger_floor'
        ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    ALTER TABLE notify.sent_ledger_floor DROP CONSTRAINT sent_ledger_partition_bound;
END $$;
