"""The notifier's settings: read once from the environment in `main()`, then passed down.

The retry schedule is data: with the defaults an entry is tried at about 0, 5, 15, 35, 75 and
135 s (+ up to 20 % jitter each) after its first delivery, then dead-lettered. The last attempt
therefore starts by ~165 s at the latest, well inside the 5-minute SLA, and a circuit breaker
stops the schedule from being burnt on an SMTP server that is down.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from acme_runtime.env import (
    EnvReader,
    SettingsError,
    default_consumer_name,
    default_helo_name,
    struct_defaults,
)

__all__ = ["NotifySettings", "SettingsError"]


class NotifySettings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str
    #: PostgreSQL holding the notifier's own schema `notify` (the send ledger).
    database_url: str
    smtp_url: str
    #: A second SMTP provider, used while the primary's breaker is open (None: none).
    smtp_fallback_url: str | None = None
    from_address: str = "AcME Store <pedidos@acme.example>"
    message_id_domain: str = "acme.example"
    consumer_name: str = "notifier-1"
    log_level: str = "info"
    log_format: str = "json"
    #: In-flight sends per replica; also the most entries read at once.
    concurrency: int = 32
    #: How long XREADGROUP blocks waiting for new entries.
    block_ms: int = 1_000
    claim_interval_ms: int = 1_000
    #: How often a replica refreshes the idle time of the entries it is sending.
    heartbeat_interval_ms: int = 2_000
    backoff_base_ms: int = 5_000
    backoff_max_ms: int = 60_000
    backoff_jitter: float = 0.2
    #: Deliveries (first read + retries) before the reaper dead-letters an entry.
    max_deliveries: int = 6
    reaper_interval_ms: int = 1_000
    #: Acknowledged entries younger than this stay on the stream (for `acme trace`).
    stream_retention_ms: int = 3_600_000
    smtp_pool_size: int = 8
    smtp_timeout_s: float = 10.0
    #: E-mails per second per replica (0 = unlimited): real providers throttle.
    smtp_rate_per_s: float = 0.0
    smtp_fallback_pool_size: int = 8
    #: E-mails per second per replica to the fallback (0 = unlimited).
    smtp_fallback_rate_per_s: float = 0.0
    #: The fallback carrying the traffic for longer than this raises acme_notify_fallback_overdue.
    smtp_fallback_alert_after_s: float = 900.0
    #: The name given in EHLO. Strict relays (Postfix `reject_non_fqdn_helo_hostname`) refuse a
    #: name that is not fully qualified; default: this host's fully qualified name.
    smtp_helo_name: str = "localhost"
    #: A permanent refusal given to this many different recipients ...
    storm_recipients: int = 5
    #: ... within this window, and making up at least this share of the window's outcomes, is
    #: the relay refusing us (a misconfiguration), not them: nothing is dead-lettered for it.
    storm_window_s: float = 60.0
    storm_share: float = 0.5
    #: After SMTP accepted an e-mail, how long its ledger row is retried through a PostgreSQL
    #: outage before the entry is acknowledged anyway (and the miss counted and logged).
    ledger_patience_s: float = 30.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 5.0
    breaker_max_cooldown_s: float = 30.0
    #: Send-ledger rows older than this are deleted (must outlive any possible re-delivery).
    ledger_retention_s: int = 7 * 86_400
    db_pool_max: int = 8
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped by Prometheus from outside the pod
    metrics_port: int = 9100
    grace_s: float = 15.0
    #: How often the stream gauges (lag, pending, oldest ages) are measured.
    probe_interval_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotifySettings:
        env = EnvReader(environ)
        d = struct_defaults(cls)
        redis_url = env.optional_url("ACME_REDIS_URL", ("redis", "rediss", "unix"))
        database_url = env.optional_url("ACME_DATABASE_URL", ("postgresql", "postgres"))
        smtp_url = env.optional_url("ACME_SMTP_URL", ("smtp", "smtps"))
        if redis_url is None or database_url is None or smtp_url is None:
            missing = [
                name
                for name, value in (
                    ("ACME_REDIS_URL", redis_url),
                    ("ACME_DATABASE_URL", database_url),
                    ("ACME_SMTP_URL", smtp_url),
                )
                if value is None
            ]
            raise SettingsError(f"{missing[0]}: not set (or run `acme up` for an embedded stack)")
        settings = cls(
            redis_url=redis_url,
            database_url=database_url,
            smtp_url=smtp_url,
            from_address=env.string("ACME_MAIL_FROM", d["from_address"]),
            message_id_domain=env.string("ACME_MESSAGE_ID_DOMAIN", d["message_id_domain"]),
            consumer_name=env.string("ACME_CONSUMER_NAME", default_consumer_name(env)),
            log_level=env.choice(
                "ACME_LOG_LEVEL", d["log_level"], ("debug", "info", "warning", "error")
            ),
            log_format=env.choice("ACME_LOG_FORMAT", d["log_format"], ("json", "console")),
            concurrency=env.integer("ACME_NOTIFY_CONCURRENCY", d["concurrency"], minimum=1),
            block_ms=env.integer("ACME_NOTIFY_BLOCK_MS", d["block_ms"], minimum=10),
            claim_interval_ms=env.integer(
                "ACME_CLAIM_INTERVAL_MS", d["claim_interval_ms"], minimum=10
            ),
            heartbeat_interval_ms=env.integer(
                "ACME_HEARTBEAT_INTERVAL_MS", d["heartbeat_interval_ms"], minimum=10
            ),
            backoff_base_ms=env.integer("ACME_BACKOFF_BASE_MS", d["backoff_base_ms"], minimum=10),
            backoff_max_ms=env.integer("ACME_BACKOFF_MAX_MS", d["backoff_max_ms"], minimum=10),
            backoff_jitter=env.number("ACME_BACKOFF_JITTER", d["backoff_jitter"]),
            max_deliveries=env.integer("ACME_MAX_DELIVERIES", d["max_deliveries"], minimum=1),
            reaper_interval_ms=env.integer(
                "ACME_REAPER_INTERVAL_MS", d["reaper_interval_ms"], minimum=10
            ),
            stream_retention_ms=env.integer("ACME_STREAM_RETENTION_MS", d["stream_retention_ms"]),
            smtp_pool_size=env.integer("ACME_SMTP_POOL_SIZE", d["smtp_pool_size"], minimum=1),
            smtp_timeout_s=env.number("ACME_SMTP_TIMEOUT_S", d["smtp_timeout_s"], minimum=0.1),
            smtp_rate_per_s=env.number("ACME_SMTP_RATE_PER_S", d["smtp_rate_per_s"]),
            breaker_failures=env.integer("ACME_BREAKER_FAILURES", d["breaker_failures"], minimum=1),
            breaker_cooldown_s=env.number(
                "ACME_BREAKER_COOLDOWN_S", d["breaker_cooldown_s"], minimum=0.1
            ),
            breaker_max_cooldown_s=env.number(
                "ACME_BREAKER_MAX_COOLDOWN_S", d["breaker_max_cooldown_s"], minimum=0.1
            ),
            ledger_retention_s=env.integer(
                "ACME_LEDGER_RETENTION_S", d["ledger_retention_s"], minimum=3600
            ),
            db_pool_max=env.integer("ACME_NOTIFY_DB_POOL_MAX", d["db_pool_max"], minimum=1),
            metrics_host=env.string("ACME_METRICS_HOST", d["metrics_host"]),
            metrics_port=env.integer("ACME_METRICS_PORT", d["metrics_port"], maximum=65535),
            grace_s=env.number("ACME_NOTIFY_GRACE_S", d["grace_s"]),
            probe_interval_s=env.number(
                "ACME_PROBE_INTERVAL_S", d["probe_interval_s"], minimum=0.1
            ),
            smtp_helo_name=env.hostname("ACME_SMTP_HELO_NAME", default_helo_name),
            smtp_fallback_url=env.optional_url("ACME_SMTP_FALLBACK_URL", ("smtp", "smtps")),
            smtp_fallback_pool_size=env.integer(
                "ACME_SMTP_FALLBACK_POOL_SIZE", d["smtp_fallback_pool_size"], minimum=1
            ),
            smtp_fallback_rate_per_s=env.number(
                "ACME_SMTP_FALLBACK_RATE_PER_S", d["smtp_fallback_rate_per_s"]
            ),
            smtp_fallback_alert_after_s=env.number(
                "ACME_SMTP_FALLBACK_ALERT_AFTER_S", d["smtp_fallback_alert_after_s"], minimum=1
            ),
            storm_recipients=env.integer(
                "ACME_SMTP_STORM_RECIPIENTS", d["storm_recipients"], minimum=2
            ),
            storm_window_s=env.number("ACME_SMTP_STORM_WINDOW_S", d["storm_window_s"], minimum=1),
            storm_share=env.number("ACME_SMTP_STORM_SHARE", d["storm_share"], minimum=0.01),
            ledger_patience_s=env.number("ACME_LEDGER_PATIENCE_S", d["ledger_patience_s"]),
        )
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
        if self.breaker_max_cooldown_s < self.breaker_cooldown_s:
            raise SettingsError(
                f"ACME_BREAKER_MAX_COOLDOWN_S ({self.breaker_max_cooldown_s:g}) must be at "
                f"least ACME_BREAKER_COOLDOWN_S ({self.breaker_cooldown_s:g})"
            )
