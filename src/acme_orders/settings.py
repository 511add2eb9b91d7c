"""The order service's settings: read once from the environment in `main()`, then passed down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

from acme_runtime.channels import StreamShards, StreamShardsRead
from acme_runtime.env import (
    POSTGRES_SCHEMES,
    REDIS_SCHEMES,
    Env,
    SettingsError,
    default_consumer_name,
    load_settings,
)

__all__ = ["OrdersSettings", "SettingsError"]


class OrdersSettings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: Annotated[
        str,
        Env(
            "ACME_DATABASE_URL",
            "PostgreSQL, the source of truth (orders, outbox)",
            schemes=POSTGRES_SCHEMES,
        ),
    ]
    redis_url: Annotated[
        str,
        Env(
            "ACME_REDIS_URL",
            "Redis, the transport (events stream, receipts stream)",
            schemes=REDIS_SCHEMES,
        ),
    ]
    http_host: Annotated[str, Env("ACME_HTTP_HOST", "the API's listen address")] = "127.0.0.1"
    http_port: Annotated[
        int, Env("ACME_HTTP_PORT", "the API's listen port", minimum=0, maximum=65535)
    ] = 8000
    log_level: Annotated[
        str, Env("ACME_LOG_LEVEL", "log threshold", choices=("debug", "info", "warning", "error"))
    ] = "info"
    log_format: Annotated[
        str, Env("ACME_LOG_FORMAT", "json lines, or console", choices=("json", "console"))
    ] = "json"
    max_body_bytes: Annotated[
        int,
        Env(
            "ACME_MAX_BODY_BYTES",
            "requests with a larger body are refused with 413 before they are read whole",
            minimum=1024,
        ),
    ] = 64 * 1024
    http_max_concurrency: Annotated[
        int,
        Env(
            "ACME_HTTP_MAX_CONCURRENCY",
            "requests in progress per API process before new ones get a quick 503: an "
            "overloaded API sheds load instead of queueing requests whose clients gave up",
            minimum=1,
        ),
    ] = 1000
    api_rate_per_s: Annotated[
        float,
        Env(
            "ACME_API_RATE_PER_S",
            "requests per second per API key (per client address without a key) on /orders, "
            "shared by every API replica through Redis; more are answered 429 (0 = no limit)",
            minimum=0,
        ),
    ] = 400.0
    api_burst: Annotated[
        int,
        Env(
            "ACME_API_BURST",
            "requests a key may make at once after an idle spell, on top of the rate",
            minimum=1,
        ),
    ] = 800
    db_pool_min: Annotated[int, Env("ACME_DB_POOL_MIN", "PostgreSQL pool size", minimum=1)] = 2
    db_pool_max: Annotated[int, Env("ACME_DB_POOL_MAX", "PostgreSQL pool size", minimum=1)] = 10
    db_timeout_ms: Annotated[
        int,
        Env(
            "ACME_DB_TIMEOUT_MS",
            "statement timeout: a Postgres that hangs makes the API answer 503, never hang",
            minimum=10,
        ),
    ] = 2_000
    redis_timeout_ms: Annotated[
        int, Env("ACME_REDIS_TIMEOUT_MS", "Redis socket timeout", minimum=10)
    ] = 500
    fast_path_queue_size: Annotated[
        int,
        Env(
            "ACME_FAST_PATH_QUEUE_SIZE",
            "events waiting for the fast-path publisher; past this the relay publishes them",
        ),
    ] = 10_000
    fast_path_pause_ms: Annotated[
        int,
        Env(
            "ACME_FAST_PATH_PAUSE_MS",
            "after a Redis failure the fast path rests this long and leaves publishing to the "
            "relay",
        ),
    ] = 1_000
    relay_poll_ms: Annotated[
        int,
        Env(
            "ACME_RELAY_POLL_MS",
            "how often the relay looks for unpublished events when nothing wakes it",
            minimum=10,
        ),
    ] = 500
    relay_grace_ms: Annotated[
        int,
        Env("ACME_RELAY_GRACE_MS", "the relay leaves events younger than this to the fast path"),
    ] = 1_000
    relay_batch: Annotated[
        int, Env("ACME_RELAY_BATCH", "events per relay/re-drive batch", minimum=1)
    ] = 500
    redrive_after_s: Annotated[
        int,
        Env(
            "ACME_REDRIVE_AFTER_S",
            "published but unconfirmed events older than this are published again (Redis "
            "data loss)",
            minimum=1,
        ),
    ] = 60
    dedupe_ttl_s: Annotated[
        int,
        Env("ACME_DEDUPE_TTL_S", "how long a publish-once dedupe key lives in Redis", minimum=60),
    ] = 86_400
    idempotency_ttl_s: Annotated[
        int, Env("ACME_IDEMPOTENCY_TTL_S", "how long an Idempotency-Key is remembered", minimum=60)
    ] = 86_400
    janitor_interval_s: Annotated[
        int,
        Env(
            "ACME_JANITOR_INTERVAL_S",
            "how often the janitor deletes expired idempotency keys",
            minimum=1,
        ),
    ] = 60
    partition_interval_s: Annotated[
        int,
        Env(
            "ACME_PARTITION_INTERVAL_S",
            "width of one partition of the order timeline (by the order id's time); created "
            "ahead and dropped whole by the janitor",
            minimum=60,
        ),
    ] = 86_400
    timeline_retention_s: Annotated[
        int,
        Env(
            "ACME_TIMELINE_RETENTION_S",
            "timeline partitions whose whole range is older than this are dropped (orders and "
            "their items are kept)",
            minimum=60,
        ),
    ] = 30 * 86_400
    metrics_host: Annotated[
        str,
        Env(
            "ACME_METRICS_HOST",
            "where the API and relay processes serve /metrics and their probes (never on the "
            "API's public listener)",
        ),
    ] = "0.0.0.0"  # noqa: S104 - scraped by Prometheus from outside the pod
    metrics_port: Annotated[
        int,
        Env(
            "ACME_METRICS_PORT",
            "the API's and the relay's /metrics port (0 = off)",
            maximum=65535,
        ),
    ] = 9100
    api_key_cache_s: Annotated[
        float,
        Env(
            "ACME_API_KEY_CACHE_S",
            "how long an API process trusts what it looked up about an API key: a revoked key "
            "is refused within this time (0 = look up every request)",
            maximum=300,
        ),
    ] = 5.0
    stream_shards: StreamShards = 1
    stream_shards_read: StreamShardsRead = 0
    receipts_linger_ms: Annotated[
        int,
        Env(
            "ACME_RECEIPTS_LINGER_MS",
            "after a read that did not fill a batch, the receipts consumer waits this long so "
            "the next one applies more receipts per statement (status lags by at most this)",
            minimum=0,
            maximum=5_000,
        ),
    ] = 100
    receipts_claim_idle_ms: Annotated[
        int,
        Env(
            "ACME_RECEIPTS_CLAIM_IDLE_MS",
            "receipts pending this long with a departed relay replica are claimed by another",
            minimum=1_000,
        ),
    ] = 30_000
    outbox_probe_interval_s: Annotated[
        float,
        Env(
            "ACME_OUTBOX_PROBE_INTERVAL_S",
            "how often the relay measures the outbox backlog for its gauges",
            minimum=0.1,
        ),
    ] = 5.0
    consumer_name: Annotated[
        str,
        Env(
            "ACME_CONSUMER_NAME",
            "the receipts consumer's name; unique per process",
            default_from=default_consumer_name,
        ),
    ] = "orders-1"

    @property
    def read_shards(self) -> int:
        """How many shards this process reads: ACME_STREAM_SHARDS, or more while shrinking."""
        return max(self.stream_shards, self.stream_shards_read)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OrdersSettings:
        settings = load_settings(cls, environ, unset_hint="or run `acme up` for an embedded stack")
        if settings.dedupe_ttl_s <= settings.redrive_after_s:
            raise SettingsError(
                f"ACME_DEDUPE_TTL_S ({settings.dedupe_ttl_s}) must exceed ACME_REDRIVE_AFTER_S "
                f"({settings.redrive_after_s}): a re-drive would otherwise publish an event "
                "still in flight a second time, and two notifiers could send it at once"
            )
        return settings
