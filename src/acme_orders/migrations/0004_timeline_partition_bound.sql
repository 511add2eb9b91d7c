-- Partitioning order_timeline (docs/adr/0018-partitioned-tables.md), step 1 of 3.
--
-- The existing table becomes the partition of every order id below a first bound: the smallest
-- UUIDv7 of UTC midnight two days from now, so that orders made while the rest of the rollout
-- runs (at least 24 h) are still below it. Its CHECK is added NOT VALID: an instant under the
-- strong lock, no scan; step 2 validates it under a lock that lets writes go on, and step 3's
-- ATTACH then trusts it instead of scanning the table under its strongest lock.
DO $$ BEGIN
    EXECUTE format('ALTER TABLE order_timeline ADD CONSTRAINT order_timeline_partition_bound'
                   ' CHECK (order_id < %L::uuid) NOT VALID',
                   CASE WHEN EXISTS (SELECT 1 FROM order_timeline)
                        THEN acme_uuid7_bound(date_trunc('day', now(), 'UTC') + interval '2 days')
                        -- A new install: nothing to keep below the bound, and every process
                        -- that writes this table creates its partitions before it starts.
                        ELSE acme_uuid7_bound(date_trunc('minute', now())) END);
END $$;
