-- Partitioning order_timeline, step 2 of 3: the scans, each in the weakest lock that allows it.
--
-- VALIDATE reads the whole table under SHARE UPDATE EXCLUSIVE: reads and writes go on. The two
-- unique indexes are the ones the partitioned table will require of its partitions (a
-- partitioned table's unique keys include its partition key, order_id); building them here
-- blocks writes to the timeline while they build (reads go on). On a large table, build them
-- beforehand with `CREATE UNIQUE INDEX CONCURRENTLY` under these same names (ADR 0018): this
-- file then finds them and builds nothing.
ALTER TABLE order_timeline VALIDATE CONSTRAINT order_timeline_partition_bound;
CREATE UNIQUE INDEX IF NOT EXISTS order_timeline_floor_pkey ON order_timeline (order_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS order_timeline_floor_source
    ON order_timeline (order_id, source_id) WHERE source_id IS NOT NULL;
