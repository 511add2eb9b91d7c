"""Observability of the whole flow: one trace per order, metrics that count, logs that join up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from acme_cli.smtp_sink import MailSink
from acme_notify.probe import measure_stream
from acme_notify.streams import Streams
from acme_orders.settings import OrdersSettings
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.logs import configure_logging
from tests.harness import (
    api_client,
    eventually,
    notify_settings,
    running_order_workers,
    running_replica,
)
from tests.integration.test_api import ORDER
from tests.integration.test_outbox import insert_orders

pytestmark = pytest.mark.slow


@pytest.fixture
def api_metrics() -> OrdersMetrics:
    return OrdersMetrics()


@pytest.fixture
async def api(
    orders_settings: OrdersSettings, api_metrics: OrdersMetrics
) -> AsyncIterator[AsyncTestClient[Any]]:
    async with (
        api_client(orders_settings, api_metrics) as client,
        running_order_workers(orders_settings),
    ):
        yield client


def sample_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def by_name(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, f"{name}: {[s.name for s in spans]}"
    return matching[0]


async def test_one_order_produces_one_connected_trace(
    api: AsyncTestClient[Any],
    sink: MailSink,
    database_url: str,
    redis_url: str,
    spans: InMemorySpanExporter,
) -> None:
    """HTTP -> DB -> publish -> consume -> SMTP -> receipt: one trace, parent to child."""
    async with running_replica(notify_settings(database_url, redis_url, sink.url)):
        response = await api.post("/orders", json=ORDER)
        await sink.wait_for(1, timeout_s=10)

        async def receipt_traced() -> bool:
            return any(s.name == "process {acme}:receipts" for s in spans.get_finished_spans())

        await eventually(receipt_traced, what="the receipt's span")
    trace_id = int(response.headers["x-trace-id"], 16)
    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    http = by_name(finished, "POST /orders")
    db = by_name(finished, "INSERT orders")
    # Under load the relay may try too (after its grace period); publish-once makes that a
    # no-op, and only the publish that added the entry is the consumer's parent.
    publishes = [s for s in finished if s.name == "send {acme}:events"]
    [publish] = [s for s in publishes if s.attributes and s.attributes["acme.publish.added"]]
    consume = by_name(finished, "process {acme}:events")
    smtp = by_name(finished, "smtp send")
    receipt = by_name(finished, "process {acme}:receipts")
    assert http.kind == SpanKind.SERVER and http.parent is None
    assert db.parent is not None and db.parent.span_id == http.context.span_id
    assert publish.kind == SpanKind.PRODUCER and publish.parent.span_id == http.context.span_id
    assert consume.kind == SpanKind.CONSUMER
    assert consume.parent is not None and consume.parent.span_id == publish.context.span_id
    assert smtp.parent is not None and smtp.parent.span_id == consume.context.span_id
    assert receipt.parent is not None and receipt.parent.span_id == consume.context.span_id
    assert consume.attributes is not None
    assert consume.attributes["messaging.system"] == "redis"
    assert consume.attributes["messaging.destination.name"] == "{acme}:events"
    assert consume.attributes["messaging.operation.type"] == "process"
    assert consume.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"]
    assert http.attributes["http.route"] == "/orders"
    assert http.attributes["http.response.status_code"] == 201
    order = (await api.get(f"/orders/{response.json()['id']}")).json()
    assert order["trace_id"] == response.headers["x-trace-id"]


async def test_an_order_sampled_out_upstream_is_traced_nowhere_but_keeps_its_trace_id(
    api: AsyncTestClient[Any],
    sink: MailSink,
    database_url: str,
    redis_url: str,
    spans: InMemorySpanExporter,
) -> None:
    """Parent-based sampling: a caller's "not sampled" decision holds through API, notifier
    and receipts (no partial trace), and the order still answers with its trace id."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with running_replica(notify_settings(database_url, redis_url, sink.url)):
        response = await api.post(
            "/orders", json=ORDER, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"}
        )
        assert response.status_code == 201
        await sink.wait_for(1, timeout_s=10)
        order_id = response.json()["id"]

        async def receipt_applied() -> bool:
            order = (await api.get(f"/orders/{order_id}")).json()
            return bool(order["notification"]["status"] == "sent")

        await eventually(receipt_applied, what="the sent receipt to be applied")
    assert response.headers["x-trace-id"] == trace_id
    assert (await api.get(f"/orders/{order_id}")).json()["trace_id"] == trace_id
    recorded = [
        s.name for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)
    ]
    assert recorded == []


async def test_metrics_count_a_known_workload(
    api: AsyncTestClient[Any],
    api_metrics: OrdersMetrics,
    sink: MailSink,
    database_url: str,
    redis_url: str,
) -> None:
    """After 3 orders and 1 bad request, the API and notifier metrics say exactly that."""
    async with running_replica(notify_settings(database_url, redis_url, sink.url)) as replica:
        for _ in range(3):
            assert (await api.post("/orders", json=ORDER)).status_code == 201
        assert (await api.post("/orders", json={"items": []})).status_code == 422
        await sink.wait_for(3, timeout_s=10)

        async def all_counted() -> bool:
            return replica.metrics.emails_sent._value.get() == 3

        await eventually(all_counted, what="the notifier to count its 3 e-mails")
        notifier_text = generate_latest(replica.metrics.registry).decode()
    # What the API's metrics listener serves (its own port, not the public one).
    text = generate_latest(api_metrics.registry).decode()
    assert sample_value(text, "acme_orders_created_total") == 3
    assert (
        sample_value(
            text,
            "acme_http_request_duration_seconds_count",
            route="/orders",
            method="POST",
            status="201",
        )
        == 3
    )
    assert (
        sample_value(
            text,
            "acme_http_request_duration_seconds_count",
            route="/orders",
            method="POST",
            status="422",
        )
        == 1
    )
    assert sample_value(text, "acme_events_published_total", path="fast_path") == 3
    assert sample_value(notifier_text, "acme_notify_emails_sent_total") == 3
    assert sample_value(notifier_text, "acme_notify_e2e_latency_seconds_count") == 3
    assert sample_value(notifier_text, "acme_notify_e2e_latency_seconds_bucket", le="10.0") == 3
    assert sample_value(notifier_text, "acme_notify_circuit_state") == 0
    assert "order_id" not in text and "order_id" not in notifier_text, "no ids in labels"


async def test_stream_gauges_follow_a_backlog_as_it_builds_and_drains(
    pool: Any,
    redis: Redis,
    sink: MailSink,
    database_url: str,
    redis_url: str,
) -> None:
    """Lag and the oldest unread age grow with undelivered events and return to 0 when drained."""
    from acme_orders.relay import relay_once
    from acme_orders.store import OrderStore

    await Streams(redis, "probe").ensure_group()
    await insert_orders(OrderStore(pool), 12)
    await relay_once(OrderStore(pool), redis, grace_ms=0, batch=100, dedupe_ttl_s=60)
    built = await measure_stream(redis)
    assert built["lag"] == 12 and built["pending"] == 0
    assert built["oldest_unread_age_s"] >= 0 and built["length"] == 12
    async with running_replica(notify_settings(database_url, redis_url, sink.url)):
        await sink.wait_for(12, timeout_s=10)

        async def drained() -> bool:
            state = await measure_stream(redis)
            return state["lag"] == 0 and state["pending"] == 0

        await eventually(drained, what="lag and pending back to 0")
    final = await measure_stream(redis)
    assert final["oldest_unread_age_s"] == 0 and final["oldest_pending_age_s"] == 0


async def test_log_lines_carry_ids_and_never_a_full_address(
    api: AsyncTestClient[Any],
    sink: MailSink,
    database_url: str,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    spans: InMemorySpanExporter,
) -> None:
    """Lines about an order carry order, event, trace and span ids; e-mails are masked."""
    configure_logging("info", "json")
    capsys.readouterr()
    async with running_replica(notify_settings(database_url, redis_url, sink.url)):
        order_id = (await api.post("/orders", json=ORDER)).json()["id"]
        await sink.wait_for(1, timeout_s=10)
    output = capsys.readouterr()
    lines = [
        json.loads(line) for line in (output.err + output.out).splitlines() if line.startswith("{")
    ]
    about_order = [line for line in lines if line.get("order_id") == order_id]
    events = {line["event"] for line in about_order}
    assert {"order_created", "email_sent"} <= events
    for line in about_order:
        assert {"event_id", "trace_id", "span_id"} <= set(line), line
    assert "ana@example.com" not in output.err + output.out
    assert any(line.get("email") == "a***@example.com" for line in about_order)


async def test_lag_is_counted_page_by_page_past_a_thousand_entries(redis: Redis) -> None:
    """On Redis 6.2 the lag is counted inside Redis in pages, exactly, up to the cap."""
    await Streams(redis, "probe").ensure_group()
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(2_500):
            pipe.xadd("{acme}:events", {"n": str(n)})
        await pipe.execute()
    state = await measure_stream(redis)
    assert state["lag"] == 2_500
    assert state["lag_capped"] == 0
