-- The notifier's own schema. The order service never reads or writes it.

CREATE SCHEMA IF NOT EXISTS notify;

-- One row per event whose e-mail an SMTP server accepted. Checked before every send, written
-- right after the server's 250, so a re-delivered or re-driven event is acknowledged without a
-- second e-mail. In PostgreSQL, not Redis, so that losing Redis cannot also lose the ledger.
CREATE TABLE notify.sent_ledger (
    event_id    uuid        PRIMARY KEY,
    order_id    uuid        NOT NULL,
    message_id  text        NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    smtp_reply  text        NOT NULL,
    consumer    text        NOT NULL,
    deliveries  integer     NOT NULL
);
CREATE INDEX sent_ledger_sent_at ON notify.sent_ledger (sent_at);
