-- Partitioning notify.sent_ledger by event_id (docs/adr/0018-partitioned-tables.md), step 1
-- of 3: the bound of the partition the existing table becomes, the smallest UUIDv7 of UTC
-- midnight two days from now (events made during the rest of the rollout stay below it). The
-- CHECK is NOT VALID: an instant under the strong lock, no scan; step 2 validates it.
DO $$ BEGIN
    EXECUTE format('ALTER TABLE notify.sent_ledger ADD CONSTRAINT sent_ledger_partition_bound'
                   ' CHECK (event_id < %L::uuid) NOT VALID',
                   CASE WHEN EXISTS (SELECT 1 FROM notify.sent_ledger)
                        THEN acme_uuid7_bound(date_trunc('day', now(), 'UTC') + interval '2 days')
                        -- A new install: nothing to keep below the bound, and every process
                        -- that writes this table creates its partitions before it starts.
                        ELSE acme_uuid7_bound(date_trunc('minute', now())) END);
END $$;
