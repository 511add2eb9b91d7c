-- The W3C traceparent of the request that created the order, so whoever publishes the event
-- (fast path, relay or re-drive) continues the order's trace.
ALTER TABLE outbox ADD COLUMN traceparent text;
