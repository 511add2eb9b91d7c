"""The notifier's Prometheus metrics, one registry per process (no global state).

The stream gauges (lag, pending, oldest ages) are the scaling and alerting signals: the HPA
scales notifier replicas on `acme_stream_lag_entries`, and the SLA alerts watch the oldest
pending and unread ages against the 5-minute promise.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from acme_runtime.actors import tick_failures_counter
from acme_runtime.heap import gc_pause_histogram
from acme_runtime.partitions import PartitionMetrics

__all__ = ["E2E_BUCKETS_S", "NotifyMetrics"]

#: Order commit -> SMTP acceptance: buckets around 1 s, 10 s, 60 s and the 300 s SLA.
E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 240, 300, 600)
SEND_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.gc_pauses = gc_pause_histogram(r)
        self.partitions = PartitionMetrics.register(r)
        self.emails_sent = Counter(
            "acme_notify_emails_sent_total", "E-mails accepted by the SMTP server.", registry=r
        )
        self.send_failures = Counter(
            "acme_notify_send_failures_total",
            "Failed delivery attempts, by reason class (smtp_transient, smtp_provider: the "
            "relay refuses us, smtp_permanent, invalid_recipient, poison, outage: our "
            "PostgreSQL or Redis unavailable, error: a defect or a refusal of our storage).",
            ["reason_class"],
            registry=r,
        )
        self.bookkeeping_failures = Counter(
            "acme_notify_bookkeeping_failures_total",
            "E-mails SMTP accepted whose send-ledger row (stage=ledger) or acknowledgement "
            "(stage=ack) could not be written: each may be sent again once.",
            ["stage"],
            registry=r,
        )
        self.actor_tick_failures = tick_failures_counter(r)
        self.delivery_attempts = Counter(
            "acme_notify_delivery_attempts_total",
            "Entries handled (each try counts once).",
            registry=r,
        )
        self.held = Counter(
            "acme_notify_held_total",
            "Tries held back because their recipient reached ACME_RECIPIENT_MAX_PER_HOUR: the "
            "entry stays pending, its try is given back, and it is tried again when the "
            "window has room.",
            registry=r,
        )
        self.dead_lettered = Counter(
            "acme_notify_dead_lettered_total",
            "Entries moved to the dead stream, by reason.",
            ["reason_class"],
            registry=r,
        )
        self.rescinded = Counter(
            "acme_notify_dead_letters_rescinded_total",
            "Dead letters put back on the stream by the notifier itself: refused by SMTP just "
            "before a storm of the same refusal showed the relay was refusing us.",
            registry=r,
        )
        self.dead_archived = Counter(
            "acme_notify_dead_letters_archived_total",
            "Dead letters moved from the dead stream to the archive in PostgreSQL (over "
            "ACME_DEAD_MAX_ENTRIES or older than ACME_DEAD_RETENTION_S).",
            registry=r,
        )
        self.dead_archive_expired = Counter(
            "acme_notify_dead_archive_expired_total",
            "Archived dead letters deleted after ACME_DEAD_ARCHIVE_RETENTION_S.",
            registry=r,
        )
        self.duplicates_suppressed = Counter(
            "acme_notify_duplicates_suppressed_total",
            "Redelivered events acknowledged without a second e-mail (send ledger hit).",
            registry=r,
        )
        self.e2e_latency = Histogram(
            "acme_notify_e2e_latency_seconds",
            "Order commit to SMTP acceptance: the 5-minute SLA.",
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.send_duration = Histogram(
            "acme_notify_smtp_send_duration_seconds",
            "One SMTP transaction, successful or not.",
            buckets=SEND_BUCKETS_S,
            registry=r,
        )
        self.provider_sends = Counter(
            "acme_notify_provider_sends_total",
            "SMTP transactions by provider (primary, fallback) and outcome (accepted, "
            "smtp_transient, smtp_provider, smtp_permanent, invalid_recipient, error).",
            ["provider", "outcome"],
            registry=r,
        )
        self.provider_send_duration = Histogram(
            "acme_notify_provider_send_duration_seconds",
            "One SMTP transaction with a provider, successful or not.",
            ["provider"],
            buckets=SEND_BUCKETS_S,
            registry=r,
        )
        self.provider_circuit_state = Gauge(
            "acme_notify_provider_circuit_state",
            "Each provider's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["provider"],
            registry=r,
        )
        self.fallback_active = Gauge(
            "acme_notify_fallback_active_seconds",
            "How long a provider other than the primary has been taking the new sends (0 while "
            "the primary does).",
            registry=r,
        )
        self.fallback_overdue = Gauge(
            "acme_notify_fallback_overdue",
            "1 once the fallback has carried the traffic for longer than "
            "ACME_SMTP_FALLBACK_ALERT_AFTER_S (the primary is not back).",
            registry=r,
        )
        self.in_flight = Gauge(
            "acme_notify_in_flight_entries", "Entries being handled by this replica.", registry=r
        )
        self.circuit_state = Gauge(
            "acme_notify_circuit_state",
            "SMTP circuit breaker of the best provider (0 closed, 1 half-open, 2 open): 2 means "
            "no provider may be tried and the replica has stopped sending.",
            registry=r,
        )
        self.smtp_in_use = Gauge(
            "acme_notify_smtp_connections_in_use", "SMTP connections busy sending.", registry=r
        )
        self.smtp_open = Gauge(
            "acme_notify_smtp_connections_open", "SMTP connections open in the pool.", registry=r
        )
        labels = ["stream", "group"]
        self.stream_length = Gauge(
            "acme_stream_length_entries",
            "Entries held by the stream (XLEN).",
            ["stream"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "acme_stream_lag_entries",
            "Entries not yet delivered to the consumer group: the autoscaling signal.",
            labels,
            registry=r,
        )
        self.stream_pending = Gauge(
            "acme_stream_pending_entries",
            "Entries delivered but not acknowledged.",
            labels,
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "acme_stream_oldest_pending_age_seconds",
            "Age (since publication) of the oldest unacknowledged entry, 0 when none.",
            labels,
            registry=r,
        )
        self.oldest_unread_age = Gauge(
            "acme_stream_oldest_unread_age_seconds",
            "Age (since publication) of the oldest entry not yet delivered, 0 when none.",
            labels,
            registry=r,
        )
