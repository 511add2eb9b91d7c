"""The notifier's settings: read once from the environment in `main()`, then passed down.

The retry schedule is data: with the defaults an entry is tried at about 0, 5, 15, 35, 75 and
135 s (+ up to 20 % jitter each) after its first delivery, then dead-lettered. The last attempt
therefore starts by ~165 s at the latest, well inside the 5-minute SLA, and a circuit breaker
stops the schedule from being burnt on an SMTP server that is down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

from acme_runtime.channels import StreamShards, StreamShardsRead
from acme_runtime.env import (
    POSTGRES_SCHEMES,
    REDIS_SCHEMES,
    SMTP_SCHEMES,
    Env,
    SettingsError,
    default_consumer_name,
    default_helo_name,
    load_settings,
)

__all__ = ["NotifySettings", "SettingsError"]


class NotifySettings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: Annotated[str, Env("ACME_REDIS_URL", "Redis, the transport", schemes=REDIS_SCHEMES)]
    database_url: Annotated[
        str,
        Env(
            "ACME_DATABASE_URL",
            "PostgreSQL holding the notifier's own schema `notify` (the send ledger)",
            schemes=POSTGRES_SCHEMES,
        ),
    ]
    smtp_url: Annotated[str, Env("ACME_SMTP_URL", "the SMTP relay", schemes=SMTP_SCHEMES)]
    smtp_fallback_url: Annotated[
        str | None,
        Env(
            "ACME_SMTP_FALLBACK_URL",
            "a second SMTP provider, used while the primary's breaker is open (unset: none)",
            schemes=SMTP_SCHEMES,
        ),
    ] = None
    from_address: Annotated[str, Env("ACME_MAIL_FROM", "the From header and envelope sender")] = (
        "AcME Store <pedidos@acme.example>"
    )
    message_id_domain: Annotated[
        str, Env("ACME_MESSAGE_ID_DOMAIN", "right-hand side of the deterministic Message-ID")
    ] = "acme.example"
    consumer_name: Annotated[
        str,
        Env(
            "ACME_CONSUMER_NAME",
            "this replica's name in the stream group; unique per process",
            default_from=default_consumer_name,
        ),
    ] = "notifier-1"
    log_level: Annotated[
        str, Env("ACME_LOG_LEVEL", "log threshold", choices=("debug", "info", "warning", "error"))
    ] = "info"
    log_format: Annotated[
        str, Env("ACME_LOG_FORMAT", "json lines, or console", choices=("json", "console"))
    ] = "json"
    concurrency: Annotated[
        int,
        Env(
            "ACME_NOTIFY_CONCURRENCY",
            "in-flight sends per replica; also the most entries read at once",
            minimum=1,
        ),
    ] = 32
    stream_shards: StreamShards = 1
    stream_shards_read: StreamShardsRead = 0
    block_ms: Annotated[
        int, Env("ACME_NOTIFY_BLOCK_MS", "how long XREADGROUP waits for new entries", minimum=10)
    ] = 1_000
    read_linger_ms: Annotated[
        int,
        Env(
            "ACME_NOTIFY_READ_LINGER_MS",
            "after a read that did not fill the free send slots, a replica waits this long so "
            "the next read brings several entries, whose database and Redis work is then done "
            "in shared round trips (adds at most this to an e-mail's latency; 0: off)",
            minimum=0,
            maximum=1_000,
        ),
    ] = 20
    claim_interval_ms: Annotated[
        int, Env("ACME_CLAIM_INTERVAL_MS", "how often due retries are claimed", minimum=10)
    ] = 1_000
    heartbeat_interval_ms: Annotated[
        int,
        Env(
            "ACME_HEARTBEAT_INTERVAL_MS",
            "how often a replica refreshes the idle time of the entries it is sending",
            minimum=10,
        ),
    ] = 2_000
    backoff_base_ms: Annotated[
        int, Env("ACME_BACKOFF_BASE_MS", "first retry delay; doubles per delivery", minimum=10)
    ] = 5_000
    backoff_max_ms: Annotated[int, Env("ACME_BACKOFF_MAX_MS", "retry delay cap", minimum=10)] = (
        60_000
    )
    backoff_jitter: Annotated[
        float, Env("ACME_BACKOFF_JITTER", "retry delays stretched by up to this fraction")
    ] = 0.2
    max_deliveries: Annotated[
        int,
        Env(
            "ACME_MAX_DELIVERIES",
            "deliveries (first read + retries) before the reaper dead-letters an entry",
            minimum=1,
        ),
    ] = 6
    reaper_interval_ms: Annotated[
        int, Env("ACME_REAPER_INTERVAL_MS", "reaper and trimmer period", minimum=10)
    ] = 1_000
    stream_retention_ms: Annotated[
        int,
        Env(
            "ACME_STREAM_RETENTION_MS",
            "acknowledged entries younger than this stay on the stream (0: trimmed at the next"
            " reaper round once every group acknowledged them)",
        ),
    ] = 0
    smtp_pool_size: Annotated[
        int, Env("ACME_SMTP_POOL_SIZE", "SMTP connections per replica", minimum=1)
    ] = 8
    smtp_timeout_s: Annotated[
        float, Env("ACME_SMTP_TIMEOUT_S", "bound on one SMTP transaction", minimum=0.1)
    ] = 10.0
    smtp_rate_per_s: Annotated[
        float,
        Env(
            "ACME_SMTP_RATE_PER_S",
            "e-mails per second per replica (0 = unlimited): real providers throttle",
        ),
    ] = 0.0
    smtp_fallback_pool_size: Annotated[
        int,
        Env(
            "ACME_SMTP_FALLBACK_POOL_SIZE",
            "SMTP connections per replica to the fallback",
            minimum=1,
        ),
    ] = 8
    smtp_fallback_rate_per_s: Annotated[
        float,
        Env(
            "ACME_SMTP_FALLBACK_RATE_PER_S",
            "e-mails per second per replica to the fallback (0 = unlimited)",
        ),
    ] = 0.0
    smtp_fallback_alert_after_s: Annotated[
        float,
        Env(
            "ACME_SMTP_FALLBACK_ALERT_AFTER_S",
            "the fallback carrying the traffic for longer than this raises "
            "acme_notify_fallback_overdue",
            minimum=1,
        ),
    ] = 900.0
    smtp_helo_name: Annotated[
        str,
        Env(
            "ACME_SMTP_HELO_NAME",
            "the name given in EHLO. Strict relays (Postfix `reject_non_fqdn_helo_hostname`) "
            "refuse a name that is not fully qualified; default: this host's FQDN",
            hostname=True,
            default_from=default_helo_name,
        ),
    ] = "localhost"
    storm_recipients: Annotated[
        int,
        Env(
            "ACME_SMTP_STORM_RECIPIENTS",
            "a permanent refusal given to this many different recipients ...",
            minimum=2,
        ),
    ] = 5
    storm_window_s: Annotated[
        float, Env("ACME_SMTP_STORM_WINDOW_S", "... within this window ...", minimum=1)
    ] = 60.0
    storm_share: Annotated[
        float,
        Env(
            "ACME_SMTP_STORM_SHARE",
            "... and making up at least this share of the window's outcomes is the relay "
            "refusing us (a misconfiguration), not them: nothing is dead-lettered for it",
            minimum=0.01,
        ),
    ] = 0.5
    ledger_patience_s: Annotated[
        float,
        Env(
            "ACME_LEDGER_PATIENCE_S",
            "after SMTP accepted an e-mail, how long its ledger row is retried through a "
            "PostgreSQL outage before the entry is acknowledged anyway (counted and logged)",
        ),
    ] = 30.0
    breaker_failures: Annotated[
        int,
        Env(
            "ACME_BREAKER_FAILURES",
            "consecutive server-down failures that open the circuit",
            minimum=1,
        ),
    ] = 5
    breaker_cooldown_s: Annotated[
        float,
        Env(
            "ACME_BREAKER_COOLDOWN_S",
            "first open period; doubles while probes fail",
            minimum=0.1,
        ),
    ] = 5.0
    breaker_max_cooldown_s: Annotated[
        float, Env("ACME_BREAKER_MAX_COOLDOWN_S", "longest open period", minimum=0.1)
    ] = 30.0
    dead_max_entries: Annotated[
        int,
        Env(
            "ACME_DEAD_MAX_ENTRIES",
            "the dead stream keeps at most this many entries; the archiver moves the oldest to "
            "PostgreSQL (notify.dead_letters)",
            minimum=1,
        ),
    ] = 100_000
    dead_retention_s: Annotated[
        int,
        Env(
            "ACME_DEAD_RETENTION_S",
            "dead letters older than this leave the dead stream for the archive in PostgreSQL",
            minimum=1,
        ),
    ] = 7 * 86_400
    dead_archive_retention_s: Annotated[
        int,
        Env(
            "ACME_DEAD_ARCHIVE_RETENTION_S",
            "archived dead letters older than this (since they died) are deleted",
            minimum=1,
        ),
    ] = 90 * 86_400
    ledger_retention_s: Annotated[
        int,
        Env(
            "ACME_LEDGER_RETENTION_S",
            "send-ledger partitions whose whole range (by the event id's time) is older than "
            "this are dropped (must outlive any re-delivery)",
            minimum=60,
        ),
    ] = 7 * 86_400
    ledger_janitor_interval_s: Annotated[
        float,
        Env(
            "ACME_LEDGER_JANITOR_INTERVAL_S",
            "how often the send ledger's partitions are created ahead and dropped",
            minimum=1,
        ),
    ] = 300.0
    partition_interval_s: Annotated[
        int,
        Env(
            "ACME_PARTITION_INTERVAL_S",
            "width of one send-ledger partition; created ahead and dropped whole by the ledger "
            "janitor",
            minimum=60,
        ),
    ] = 86_400
    recipient_max_per_hour: Annotated[
        int,
        Env(
            "ACME_RECIPIENT_MAX_PER_HOUR",
            "confirmations per recipient address per window (ACME_RECIPIENT_WINDOW_S, an hour); "
            "more are held, pending, until the window has room, never dropped (0 = no cap)",
            minimum=0,
        ),
    ] = 20
    recipient_window_s: Annotated[
        float,
        Env(
            "ACME_RECIPIENT_WINDOW_S",
            "the sliding window of ACME_RECIPIENT_MAX_PER_HOUR; shorter only in tests",
            minimum=0.1,
        ),
    ] = 3600.0
    db_pool_max: Annotated[int, Env("ACME_NOTIFY_DB_POOL_MAX", "ledger connections", minimum=1)] = 8
    metrics_host: Annotated[str, Env("ACME_METRICS_HOST", "/metrics listen address")] = "0.0.0.0"  # noqa: S104 - scraped by Prometheus from outside the pod
    metrics_port: Annotated[
        int, Env("ACME_METRICS_PORT", "/metrics port (0 = off)", maximum=65535)
    ] = 9100
    grace_s: Annotated[
        float,
        Env(
            "ACME_NOTIFY_GRACE_S",
            "drain time on SIGTERM before in-flight sends are cancelled",
        ),
    ] = 15.0
    probe_interval_s: Annotated[
        float,
        Env(
            "ACME_PROBE_INTERVAL_S",
            "how often the stream gauges (lag, pending, oldest ages) are measured",
            minimum=0.1,
        ),
    ] = 5.0

    @property
    def read_shards(self) -> int:
        """How many shards this process reads: ACME_STREAM_SHARDS, or more while shrinking."""
        return max(self.stream_shards, self.stream_shards_read)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotifySettings:
        settings = load_settings(cls, environ, unset_hint="or run `acme up` for an embedded stack")
        settings.check_invariants()
        return settings

    def check_invariants(self) -> None:
        """Refuses settings under which the design could send an e-mail twice, or lose one;
        each message names the variables to change."""
        if self.heartbeat_interval_ms * 3 > self.backoff_base_ms * 2:
            raise SettingsError(
                "ACME_HEARTBEAT_INTERVAL_MS must be at most 2/3 of ACME_BACKOFF_BASE_MS "
                f"(got {self.heartbeat_interval_ms} and {self.backoff_base_ms}): an entry being "
                "sent must be refreshed before a claimer may take it as abandoned and send it "
                "a second time"
            )
        if self.backoff_max_ms < self.backoff_base_ms:
            raise SettingsError(
                f"ACME_BACKOFF_MAX_MS ({self.backoff_max_ms}) must be at least "
                f"ACME_BACKOFF_BASE_MS ({self.backoff_base_ms})"
            )
        if self.grace_s <= self.smtp_timeout_s:
            raise SettingsError(
                f"ACME_NOTIFY_GRACE_S ({self.grace_s:g}) must exceed ACME_SMTP_TIMEOUT_S "
                f"({self.smtp_timeout_s:g}): a send cut off by shutdown may have been "
                "accepted unrecorded, and another replica would send it again"
            )
        if self.smtp_fallback_url is not None and self.smtp_fallback_url == self.smtp_url:
            raise SettingsError(
                "ACME_SMTP_FALLBACK_URL must name another provider than ACME_SMTP_URL: the "
                "same relay twice fails over to itself"
            )
        if not 0 < self.storm_share <= 1:
            raise SettingsError(f"ACME_SMTP_STORM_SHARE must be in (0, 1], got {self.storm_share}")
        if self.dead_archive_retention_s < self.dead_retention_s:
            raise SettingsError(
                f"ACME_DEAD_ARCHIVE_RETENTION_S ({self.dead_archive_retention_s}) must be at "
                f"least ACME_DEAD_RETENTION_S ({self.dead_retention_s}): a dead letter would be "
                "deleted as soon as it reached the archive"
            )
        if self.breaker_max_cooldown_s < self.breaker_cooldown_s:
            raise SettingsError(
                f"ACME_BREAKER_MAX_COOLDOWN_S ({self.breaker_max_cooldown_s:g}) must be at "
                f"least ACME_BREAKER_COOLDOWN_S ({self.breaker_cooldown_s:g})"
            )
