-- The order service's tables: orders, their items and timeline, the transactional outbox and
-- the idempotency keys. The notifier never reads or writes these.

CREATE TABLE orders (
    id                      uuid          PRIMARY KEY,
    customer_name           text          NOT NULL,
    customer_email          text          NOT NULL,
    locale                  text          NOT NULL,
    currency                char(3)       NOT NULL,
    total                   numeric(18,4) NOT NULL,
    created_at              timestamptz   NOT NULL,
    trace_id                text,
    notification_status     text          NOT NULL DEFAULT 'pending'
        CHECK (notification_status IN ('pending', 'published', 'sent', 'dead')),
    notification_updated_at timestamptz,
    delivery_attempts       integer       NOT NULL DEFAULT 0,
    notification_detail     text
);

CREATE TABLE order_items (
    order_id   uuid          NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no    integer       NOT NULL,
    sku        text          NOT NULL,
    name       text          NOT NULL,
    quantity   integer       NOT NULL CHECK (quantity > 0),
    unit_price numeric(18,4) NOT NULL CHECK (unit_price > 0),
    line_total numeric(18,4) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- What happened to an order, in order: created, published, each delivery attempt, sent/dead.
CREATE TABLE order_timeline (
    seq      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id uuid        NOT NULL,
    at       timestamptz NOT NULL,
    kind     text        NOT NULL,
    detail   jsonb
);
CREATE INDEX order_timeline_order ON order_timeline (order_id, seq);

-- The transactional outbox: one row per notification event, written in the order's own
-- transaction, deleted once the notifier confirms the e-mail sent or dead.
CREATE TABLE outbox (
    event_id          uuid        PRIMARY KEY,
    order_id          uuid        NOT NULL,
    envelope          bytea       NOT NULL,
    created_at        timestamptz NOT NULL,
    published_at      timestamptz,
    last_published_at timestamptz,
    stream_id         text,
    publish_count     integer     NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
CREATE INDEX outbox_unconfirmed ON outbox (last_published_at) WHERE published_at IS NOT NULL;
CREATE INDEX outbox_order ON outbox (order_id);

-- Idempotency-Key -> order, kept for a bounded time (ACME_IDEMPOTENCY_TTL_S) by the janitor.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash bytea       NOT NULL,
    order_id     uuid        NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
