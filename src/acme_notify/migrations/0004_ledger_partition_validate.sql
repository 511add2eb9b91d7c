-- Partitioning notify.sent_ledger, step 2 of 3: VALIDATE scans the table under SHARE UPDATE
-- EXCLUSIVE, which lets sends read and write the ledger meanwhile. The primary key (event_id)
-- and the sent_at index are already the indexes the partitioned table requires.
ALTER TABLE notify.sent_ledger VALIDATE CONSTRAINT sent_ledger_partition_bound;
