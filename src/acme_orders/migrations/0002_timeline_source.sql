-- Receipts may be applied more than once (a crashed consumer's pending receipts are claimed by
-- another): the receipt's stream id makes each timeline entry idempotent.
ALTER TABLE order_timeline ADD COLUMN source_id text;
CREATE UNIQUE INDEX order_timeline_source ON order_timeline (source_id)
    WHERE source_id IS NOT NULL;
