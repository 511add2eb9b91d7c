-- The conventional peer's one table: the order, no outbox (Celery's broker is the queue).
create table if not exists orders (
    id             uuid primary key,
    customer_name  text not null,
    customer_email text not null,
    locale         text not null,
    currency       text not null,
    total          numeric(18, 2) not null,
    items          jsonb not null,
    created_at     timestamptz not null default now()
);
