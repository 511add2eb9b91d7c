-- The outbox is a queue: each row is inserted, updated when published and deleted when its
-- receipt arrives, seconds later, so it leaves a dead tuple per order. With the default scale
-- factor (20 % of a table that holds a few hundred live rows) autovacuum would still come
-- often, but after a backlog drained the threshold would scale with the backlog's size; a
-- fixed threshold keeps the table's file at the size of what is in flight. Setting storage
-- parameters takes a SHARE UPDATE EXCLUSIVE lock and rewrites nothing.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000
);
