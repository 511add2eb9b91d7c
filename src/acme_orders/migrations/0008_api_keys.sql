-- API keys of the order API (src/acme_orders/api_keys.py, docs/adr/0019-api-keys.md): the
-- secret is never stored, only its SHA-256; `acme keys create/revoke` write one api_key_events
-- row each, naming the operator. Orders record the key that placed them. New tables and a
-- nullable column without a default: no rewrite, no long lock, and the previous release
-- ignores all three, so this runs before a rolling deploy.
CREATE TABLE api_keys (
    id            text        PRIMARY KEY,
    name          text        NOT NULL,
    secret_sha256 bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    scopes        text[]      NOT NULL CHECK (cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL,
    created_by    text        NOT NULL,
    revoked_at    timestamptz,
    revoked_by    text
);

CREATE TABLE api_key_events (
    seq      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id   text        NOT NULL REFERENCES api_keys (id),
    at       timestamptz NOT NULL,
    kind     text        NOT NULL CHECK (kind IN ('created', 'revoked')),
    operator text        NOT NULL,
    detail   jsonb
);
CREATE INDEX api_key_events_key ON api_key_events (key_id, seq);

ALTER TABLE orders ADD COLUMN api_key_id text;
