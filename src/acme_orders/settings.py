"""The order service's settings: read once from the environment in `main()`, then passed down."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from acme_runtime.env import EnvReader, SettingsError, default_consumer_name, struct_defaults

__all__ = ["OrdersSettings", "SettingsError"]


class OrdersSettings(msgspec.Struct, frozen=True, kw_only=True):
    #: PostgreSQL, the source of truth (orders, outbox).
    database_url: str
    #: Redis, the transport (events stream, receipts stream).
    redis_url: str
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "info"
    log_format: str = "json"
    #: Requests with a larger body are refused with 413 before they are read whole.
    max_body_bytes: int = 64 * 1024
    #: Requests in progress per API process before new ones get a quick 503: an overloaded API
    #: sheds load instead of queueing requests whose clients have given up.
    http_max_concurrency: int = 1000
    db_pool_min: int = 2
    db_pool_max: int = 10
    #: Statement timeout: a Postgres that hangs makes the API answer 503, never hang.
    db_timeout_ms: int = 2_000
    redis_timeout_ms: int = 500
    #: Events waiting for the fast-path publisher; past this the relay publishes them.
    fast_path_queue_size: int = 10_000
    #: After a Redis failure the fast path rests this long and leaves publishing to the relay.
    fast_path_pause_ms: int = 1_000
    #: How often the relay looks for unpublished events when nothing wakes it.
    relay_poll_ms: int = 500
    #: The relay leaves events younger than this to the fast path.
    relay_grace_ms: int = 1_000
    relay_batch: int = 500
    #: Published but unconfirmed events older than this are published again (Redis data loss).
    redrive_after_s: int = 60
    #: How long a publish-once dedupe key lives in Redis.
    dedupe_ttl_s: int = 86_400
    #: How long an Idempotency-Key is remembered.
    idempotency_ttl_s: int = 86_400
    #: How often the janitor deletes expired idempotency keys.
    janitor_interval_s: int = 60
    #: Where the relay process serves /metrics (0 = off); the API serves it on its own port.
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped by Prometheus from outside the pod
    metrics_port: int = 9100
    #: After a read that did not fill a batch, the receipts consumer waits this long so the
    #: next one applies more receipts per statement (order status lags by at most this much).
    receipts_linger_ms: int = 100
    #: Receipts pending this long with a departed relay replica are claimed by another one.
    receipts_claim_idle_ms: int = 30_000
    #: How often the relay measures the outbox backlog for its gauges.
    outbox_probe_interval_s: float = 5.0
    #: The receipts consumer's name; unique per process.
    consumer_name: str = "orders-1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OrdersSettings:
        env = EnvReader(environ)
        d = struct_defaults(cls)
        database_url = env.optional_url("ACME_DATABASE_URL", ("postgresql", "postgres"))
        redis_url = env.optional_url("ACME_REDIS_URL", ("redis", "rediss", "unix"))
        if database_url is None:
            raise SettingsError(
                "ACME_DATABASE_URL: not set (or run `acme up` for an embedded stack)"
            )
        if redis_url is None:
            raise SettingsError("ACME_REDIS_URL: not set (or run `acme up` for an embedded stack)")
        settings = cls(
            database_url=database_url,
            redis_url=redis_url,
            http_host=env.string("ACME_HTTP_HOST", d["http_host"]),
            http_port=env.integer("ACME_HTTP_PORT", d["http_port"], minimum=0, maximum=65535),
            log_level=env.choice(
                "ACME_LOG_LEVEL", d["log_level"], ("debug", "info", "warning", "error")
            ),
            log_format=env.choice("ACME_LOG_FORMAT", d["log_format"], ("json", "console")),
            max_body_bytes=env.integer("ACME_MAX_BODY_BYTES", d["max_body_bytes"], minimum=1024),
            http_max_concurrency=env.integer(
                "ACME_HTTP_MAX_CONCURRENCY", d["http_max_concurrency"], minimum=1
            ),
            db_pool_min=env.integer("ACME_DB_POOL_MIN", d["db_pool_min"], minimum=1),
            db_pool_max=env.integer("ACME_DB_POOL_MAX", d["db_pool_max"], minimum=1),
            db_timeout_ms=env.integer("ACME_DB_TIMEOUT_MS", d["db_timeout_ms"], minimum=10),
            redis_timeout_ms=env.integer(
                "ACME_REDIS_TIMEOUT_MS", d["redis_timeout_ms"], minimum=10
            ),
            fast_path_queue_size=env.integer(
                "ACME_FAST_PATH_QUEUE_SIZE", d["fast_path_queue_size"]
            ),
            fast_path_pause_ms=env.integer("ACME_FAST_PATH_PAUSE_MS", d["fast_path_pause_ms"]),
            relay_poll_ms=env.integer("ACME_RELAY_POLL_MS", d["relay_poll_ms"], minimum=10),
            relay_grace_ms=env.integer("ACME_RELAY_GRACE_MS", d["relay_grace_ms"]),
            relay_batch=env.integer("ACME_RELAY_BATCH", d["relay_batch"], minimum=1),
            redrive_after_s=env.integer("ACME_REDRIVE_AFTER_S", d["redrive_after_s"], minimum=1),
            dedupe_ttl_s=env.integer("ACME_DEDUPE_TTL_S", d["dedupe_ttl_s"], minimum=60),
            idempotency_ttl_s=env.integer(
                "ACME_IDEMPOTENCY_TTL_S", d["idempotency_ttl_s"], minimum=60
            ),
            janitor_interval_s=env.integer(
                "ACME_JANITOR_INTERVAL_S", d["janitor_interval_s"], minimum=1
            ),
            receipts_linger_ms=env.integer(
                "ACME_RECEIPTS_LINGER_MS", d["receipts_linger_ms"], minimum=0, maximum=5_000
            ),
            receipts_claim_idle_ms=env.integer(
                "ACME_RECEIPTS_CLAIM_IDLE_MS", d["receipts_claim_idle_ms"], minimum=1_000
            ),
            metrics_host=env.string("ACME_METRICS_HOST", d["metrics_host"]),
            metrics_port=env.integer("ACME_METRICS_PORT", d["metrics_port"], maximum=65535),
            outbox_probe_interval_s=env.number(
                "ACME_OUTBOX_PROBE_INTERVAL_S", d["outbox_probe_interval_s"], minimum=0.1
            ),
            consumer_name=env.string("ACME_CONSUMER_NAME", default_consumer_name(env)),
        )
        if settings.dedupe_ttl_s <= settings.redrive_after_s:
            raise SettingsError(
                f"ACME_DEDUPE_TTL_S ({settings.dedupe_ttl_s}) must exceed ACME_REDRIVE_AFTER_S "
                f"({settings.redrive_after_s}): a re-drive would otherwise publish an event "
                "still in flight a second time, and two notifiers could send it at once"
            )
        return settings
