"""Abuse on real Redis, PostgreSQL and SMTP: a burst past the per-key rate limit, the limiter
with Redis down, and a flood of orders for one recipient (held over the cap, never dropped)."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis

from acme_cli.admin.trace import trace_order
from acme_cli.embedded import free_port
from acme_cli.smtp_sink import MailSink
from acme_notify.keys import HELD_SET
from acme_orders.settings import OrdersSettings
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM
from tests import harness
from tests.harness import api_client
from tests.integration.test_api import ORDER

pytestmark = pytest.mark.slow

_RATE_LIMIT = re.compile(r'^"per-key";r=(\d+);t=(\d+)$')


def _order(n: int, email: str | None = None) -> dict[str, Any]:
    customer = {**ORDER["customer"], "email": email or f"burst{n}@example.com"}
    return {**ORDER, "customer": customer}


async def test_a_burst_past_the_rate_limit_is_answered_429_and_loses_no_order(
    orders_settings: OrdersSettings, pool: asyncpg.Pool
) -> None:
    """Past the burst every request is a 429 problem with Retry-After and the RateLimit fields;
    every order answered 201 is stored, and no refused one is."""
    settings = msgspec.structs.replace(orders_settings, api_rate_per_s=0.1, api_burst=5)
    async with api_client(settings) as client:
        responses = await asyncio.gather(
            *(client.post("/orders", json=_order(n)) for n in range(20))
        )
        read = await client.get(f"/orders/{uuid.uuid4()}")
    created = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 429]
    assert len(created) + len(refused) == len(responses), [r.status_code for r in responses]
    assert len(created) == 5  # the burst; the bucket refills one request per 10 s
    for response in responses:
        assert response.headers["ratelimit-policy"] == '"per-key";q=5;w=50'
        assert _RATE_LIMIT.match(response.headers["ratelimit"]), response.headers["ratelimit"]
    for response in refused:
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == 429 and problem["type"].endswith("/rate-limited")
        assert 1 <= int(response.headers["retry-after"]) <= 10
        assert response.headers["ratelimit"].startswith('"per-key";r=0;')
    # Reads share the caller's bucket: refused too, as a problem with the same fields.
    assert read.status_code == 429 and "retry-after" in read.headers
    stored = {str(r["id"]) for r in await pool.fetch("SELECT id FROM orders")}
    assert stored == {r.json()["id"] for r in created}


async def test_the_limiter_fails_open_when_redis_is_down(
    orders_settings: OrdersSettings, pool: asyncpg.Pool
) -> None:
    """With Redis unreachable every order is still taken (201, no RateLimit fields), and each
    request let through unlimited is counted."""
    settings = msgspec.structs.replace(
        orders_settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        api_rate_per_s=0.5,
        api_burst=1,
    )
    metrics = OrdersMetrics()
    async with api_client(settings, metrics) as client:
        responses = [await client.post("/orders", json=_order(n)) for n in range(5)]
    assert [r.status_code for r in responses] == [201] * 5
    assert all("ratelimit" not in r.headers for r in responses)
    assert metrics.registry.get_sample_value("acme_api_rate_limit_fail_open_total") == 5
    assert await pool.fetchval("SELECT count(*) FROM orders") == 5


async def test_a_flood_for_one_recipient_is_held_then_released_none_dead_none_lost(
    orders_settings: OrdersSettings, sink: MailSink, redis: Redis, pool: asyncpg.Pool
) -> None:
    """Five orders for one address (spelt three ways) with a cap of 3 per 4 s window: three are
    sent, two held (pending, the reason in GET /orders/{id} and acme trace, not reaped, no try
    used); the next window releases them: all five sent, once each, none dead."""
    spellings = ["ana@example.com", "Ana@Example.com", "ana+shop@example.com"]
    settings = harness.notify_settings(
        orders_settings.database_url,
        orders_settings.redis_url,
        sink.url,
        ACME_RECIPIENT_MAX_PER_HOUR="3",
        ACME_RECIPIENT_WINDOW_S="4",
    )
    async with (
        api_client(orders_settings) as api,
        harness.running_order_workers(orders_settings),
        harness.running_replica(settings),
    ):
        order_ids = [
            (await api.post("/orders", json=_order(n, spellings[n % 3]))).json()["id"]
            for n in range(5)
        ]
        first = await sink.wait_for(3, timeout_s=10)

        async def views() -> list[dict[str, Any]]:
            return [(await api.get(f"/orders/{oid}")).json() for oid in order_ids]

        async def two_held() -> bool:
            held = [v for v in await views() if "held" in {e["kind"] for e in v["timeline"]}]
            return len(held) == 2

        await harness.eventually(two_held, timeout_s=10, what="two held steps applied")
        assert len(sink.messages) == 3, "nothing past the cap within the window"
        held_view = next(v for v in await views() if v["notification"]["status"] != "sent")
        assert held_view["notification"]["detail"] == "recipient rate limit: 3 in the last 4 s"
        step = next(e for e in held_view["timeline"] if e["kind"] == "held")
        assert step["detail"]["reason_class"] == "recipient_rate_limit"
        trace = await trace_order(pool, redis, uuid.UUID(held_view["id"]), show_pii=False)
        assert trace is not None
        assert any(
            s.kind == "held" and s.detail["detail"].startswith("recipient rate limit")
            for s in trace.steps
        )
        if held := [e for e in trace.stream_entries if e.state == "pending"]:
            assert held[0].held_until is not None

        async def all_sent() -> bool:
            return all(v["notification"]["status"] == "sent" for v in await views())

        await harness.eventually(all_sent, timeout_s=30, what="every held e-mail released and sent")
    assert len(first) == 3
    assert sorted(m.order_id for m in sink.messages) == sorted(order_ids)
    assert await redis.xlen(DEAD_STREAM) == 0
    summary: Any = await redis.xpending(EVENTS_STREAM, "notifier")
    assert int(summary["pending"]) == 0
    assert await redis.zcard(HELD_SET) == 0
    # A hold is no try: every order's one attempt is the one that sent it.
    attempts = [
        r["delivery_attempts"] for r in await pool.fetch("SELECT delivery_attempts FROM orders")
    ]
    assert attempts == [1] * 5
