"""The order service's Prometheus metrics, one registry per process (no global state).

Names follow Prometheus conventions (base units, `_total` counters, `_seconds`), and labels stay
bounded: routes are templates, never order ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from acme_runtime.actors import tick_failures_counter
from acme_runtime.heap import gc_pause_histogram
from acme_runtime.partitions import PartitionMetrics

__all__ = ["HTTP_BUCKETS_S", "OrdersMetrics"]

#: Request durations: the API's targets live between 1 ms and 50 ms.
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class OrdersMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.actor_tick_failures = tick_failures_counter(r)
        self.gc_pauses = gc_pause_histogram(r)
        self.partitions = PartitionMetrics.register(r)
        self.http_duration = Histogram(
            "acme_http_request_duration_seconds",
            "HTTP request duration, by route template, method and status code.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS_S,
            registry=r,
        )
        self.rate_limited = Counter(
            "acme_api_rate_limited_total",
            "Requests refused with 429: their API key (or client address) was over "
            "ACME_API_RATE_PER_S / ACME_API_BURST.",
            registry=r,
        )
        self.rate_limit_fail_open = Counter(
            "acme_api_rate_limit_fail_open_total",
            "Requests let through unlimited because Redis did not answer the rate limiter "
            "(it fails open: orders are still taken).",
            registry=r,
        )
        self.orders_created = Counter(
            "acme_orders_created_total", "Orders committed (with their outbox event).", registry=r
        )
        self.orders_per_statement = Histogram(
            "acme_orders_insert_batch_orders",
            "Orders written by one INSERT statement of the API's group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.idempotent_replays = Counter(
            "acme_orders_idempotent_replays_total",
            "Requests answered from an earlier order with the same Idempotency-Key.",
            registry=r,
        )
        self.events_published = Counter(
            "acme_events_published_total",
            "Events added to the stream, by path: fast_path, relay or redrive.",
            ["path"],
            registry=r,
        )
        self.events_left_to_relay = Counter(
            "acme_events_left_to_relay_total",
            "Events the API's fast path could not publish (Redis down, queue full).",
            registry=r,
        )
        self.outbox_unpublished = Gauge(
            "acme_outbox_unpublished_events", "Outbox events not yet on the stream.", registry=r
        )
        self.outbox_unconfirmed = Gauge(
            "acme_outbox_unconfirmed_events",
            "Outbox events published but not yet confirmed sent or dead.",
            registry=r,
        )
        self.outbox_oldest_unpublished_age = Gauge(
            "acme_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest event not yet on the stream (0 when none).",
            registry=r,
        )
        self.outbox_oldest_unconfirmed_age = Gauge(
            "acme_outbox_oldest_unconfirmed_age_seconds",
            "Age of the oldest order whose e-mail is not yet confirmed (0 when none): the SLA "
            "signal seen from the source of truth.",
            registry=r,
        )
        self.receipts_applied = Counter(
            "acme_receipts_applied_total",
            "Receipts applied, by type (sent, dead, attempt).",
            ["type"],
            registry=r,
        )
