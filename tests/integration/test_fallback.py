"""Two SMTP providers: failover behind the breaker, failback, one ledger.

Two real aiosmtpd servers (the primary and the fallback), a real notifier replica (its actors
running), real PostgreSQL and Redis. The primary fails in each way a relay does: it is gone
(connection refused), it answers 421 to everything, it refuses one message at a time (451),
it stalls after the message data, and a real Postfix refuses us (relay access denied); the
fallback fails too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from acme_cli.smtp_sink import MailSink
from acme_orders.settings import OrdersSettings
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP
from tests.harness import (
    api_client,
    eventually,
    notify_settings,
    running_order_workers,
    running_replica,
)
from tests.integration.test_admin_dead import admin_env  # noqa: F401 - a fixture
from tests.integration.test_admin_delivery import acme_process
from tests.integration.test_api import ORDER
from tests.postfix import PostfixServer

pytestmark = pytest.mark.slow

DOWN = "421 4.3.2 service not available"


@pytest.fixture
async def fallback() -> AsyncIterator[MailSink]:
    """The second provider: another real SMTP server."""
    server = MailSink(None)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def api(orders_settings: OrdersSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with (
        api_client(orders_settings) as client,
        running_order_workers(orders_settings),
    ):
        yield client


def two_providers(
    database_url: str, redis_url: str, primary: str, fallback: str, **env: str
) -> Any:
    return notify_settings(database_url, redis_url, primary, ACME_SMTP_FALLBACK_URL=fallback, **env)


async def place(api: AsyncTestClient[Any], count: int) -> list[str]:
    return [(await api.post("/orders", json=ORDER)).json()["id"] for _ in range(count)]


async def nothing_pending(redis: Redis) -> bool:
    summary: Any = await redis.xpending(EVENTS_STREAM, NOTIFIER_GROUP)
    return int(summary["pending"]) == 0


@pytest.mark.usefixtures("admin_env")
async def test_a_primary_that_is_gone_hands_every_email_to_the_fallback_at_once(
    api: AsyncTestClient[Any],
    sink: MailSink,
    fallback: MailSink,
    pool: asyncpg.Pool,
    database_url: str,
    redis_url: str,
) -> None:
    """Connection refused by the primary: each e-mail goes to the fallback in the same
    attempt, once; the ledger, the order's timeline and its status say which provider."""
    gone = sink.url
    await sink.stop()  # the primary is really gone: its port refuses connections
    settings = two_providers(database_url, redis_url, gone, fallback.url)
    async with running_replica(settings):
        order_ids = await place(api, 10)
        await fallback.wait_for(10, timeout_s=15)

        async def all_sent() -> bool:
            statuses = await pool.fetch("SELECT notification_status FROM orders")
            return [r["notification_status"] for r in statuses] == ["sent"] * 10

        await eventually(all_sent, what="the sent receipts")
    assert sorted(m.order_id or "" for m in fallback.messages) == sorted(order_ids)
    providers = await pool.fetch("SELECT DISTINCT provider FROM notify.sent_ledger")
    assert [r["provider"] for r in providers] == ["fallback"]
    order = (await api.get(f"/orders/{order_ids[0]}")).json()
    sent = [step for step in order["timeline"] if step["kind"] == "sent"]
    assert sent and sent[-1]["detail"]["provider"] == "fallback"
    attempts = await pool.fetch("SELECT delivery_attempts FROM orders")
    assert {r["delivery_attempts"] for r in attempts} == {1}, "one attempt each: no retry"
    code, out, _ = await acme_process("trace", order_ids[0], "--json")
    accepted = [s for s in json.loads(out)["steps"] if s["kind"] == "email_accepted"]
    assert code == 0 and accepted[0]["detail"]["provider"] == "fallback"


async def test_a_421_storm_fails_over_then_back_to_the_primary(
    api: AsyncTestClient[Any],
    sink: MailSink,
    fallback: MailSink,
    redis: Redis,
    database_url: str,
    redis_url: str,
) -> None:
    """The primary answers 421: its breaker opens and the fallback takes the mail; when the
    primary is well again, a probe finds it and new mail goes back to it."""
    sink.policy = lambda _envelope: DOWN
    settings = two_providers(database_url, redis_url, sink.url, fallback.url)
    async with running_replica(settings) as replica:
        await place(api, 10)
        await fallback.wait_for(10, timeout_s=15)
        assert replica.delivery.breaker.state in ("open", "half_open")
        assert sink.messages == []
        down_for_s = replica.delivery.fallback_for_s()
        assert down_for_s > 0, "the fallback is carrying the mail"

        async def a_probe_failed() -> bool:
            await place(api, 1)
            await asyncio.sleep(0.1)  # the pace of the traffic that brings the probes
            return replica.delivery.breaker.cooldown_s > replica.delivery.breaker.base_cooldown_s

        await eventually(a_probe_failed, timeout_s=10, what="a failed probe of the primary")
        assert replica.delivery.fallback_for_s() > down_for_s, "a failed probe restarts nothing"
        sink.policy = None  # the primary recovers

        async def back_on_the_primary() -> bool:
            await place(api, 1)  # traffic goes on, so a probe goes out once the cooldown passed
            await asyncio.sleep(0.1)  # the pace of that traffic
            return replica.delivery.breaker.state == "closed"

        await eventually(back_on_the_primary, timeout_s=15, what="failback to the primary")
        await eventually(lambda: nothing_pending(redis), what="the orders before failback")
        before = len(fallback.messages)
        await place(api, 10)
        await sink.wait_for(10, timeout_s=15)
        await eventually(lambda: nothing_pending(redis), what="everything acknowledged")
    assert len(fallback.messages) == before, "after failback, new mail goes to the primary"
    assert replica.delivery.fallback_for_s() == 0
    assert await redis.xlen(DEAD_STREAM) == 0


async def test_per_message_refusals_are_retried_not_failed_over(
    api: AsyncTestClient[Any],
    sink: MailSink,
    fallback: MailSink,
    redis: Redis,
    database_url: str,
    redis_url: str,
) -> None:
    """A 451 is about one message, not the provider: it is retried (on the primary), and the
    fallback stays idle."""
    refused: list[str] = []

    def once(envelope: Any) -> str | None:
        if len(refused) < 3:
            refused.append(str(envelope.mail_from))
            return "451 4.3.0 local error in processing"
        return None

    sink.policy = once
    settings = two_providers(database_url, redis_url, sink.url, fallback.url)
    async with running_replica(settings):
        await place(api, 3)
        await sink.wait_for(3, timeout_s=15)
        await eventually(lambda: nothing_pending(redis), what="everything acknowledged")
    assert len(refused) == 3
    assert fallback.messages == []


async def test_a_stalled_primary_is_not_raced_by_the_fallback(
    api: AsyncTestClient[Any],
    sink: MailSink,
    fallback: MailSink,
    redis: Redis,
    pool: asyncpg.Pool,
    database_url: str,
    redis_url: str,
) -> None:
    """A timeout after the message data (the primary may have accepted it) is not tried on the
    fallback in the same attempt; the e-mail is retried later like any timeout."""
    stalls: list[float] = []

    async def stall(_envelope: Any) -> str | None:
        if not stalls:
            stalls.append(asyncio.get_running_loop().time())
            await asyncio.sleep(3)  # longer than the 1 s SMTP timeout below: the fault
            return "451 4.4.2 too late"
        return None

    sink.policy = stall
    settings = two_providers(
        database_url, redis_url, sink.url, fallback.url, ACME_SMTP_TIMEOUT_S="1"
    )
    async with running_replica(settings):
        [order_id] = await place(api, 1)

        async def retried() -> bool:
            attempts = await pool.fetchval("SELECT delivery_attempts FROM orders")
            return bool(attempts and attempts >= 1) and len(sink.messages) == 1

        await eventually(retried, timeout_s=15, what="the retry after the timeout")
    assert fallback.messages == [], "the fallback never raced the stalled primary"
    assert [m.order_id for m in sink.messages] == [order_id]


async def test_both_providers_down_holds_the_mail_and_dead_letters_nothing(
    api: AsyncTestClient[Any],
    sink: MailSink,
    fallback: MailSink,
    redis: Redis,
    database_url: str,
    redis_url: str,
) -> None:
    """Both answer 421: nothing is sent, nothing is dead-lettered, no budget is spent; when the
    fallback comes back, everything goes out through it."""
    sink.policy = fallback.policy = lambda _envelope: DOWN
    settings = two_providers(database_url, redis_url, sink.url, fallback.url)
    async with running_replica(settings) as replica:
        await place(api, 10)

        async def both_open() -> bool:
            return replica.delivery.capacity(8) == 0

        await eventually(both_open, timeout_s=10, what="both breakers open")
        await asyncio.sleep(1.0)  # longer than the retry schedule's base: tries would show
        pending: Any = await redis.xpending_range(EVENTS_STREAM, NOTIFIER_GROUP, "-", "+", 100)
        assert max(int(p["times_delivered"]) for p in pending) <= 1, "no budget spent"
        assert await redis.xlen(DEAD_STREAM) == 0
        fallback.policy = None
        await fallback.wait_for(10, timeout_s=20)
    assert sink.messages == []
    assert await redis.xlen(DEAD_STREAM) == 0


async def test_a_real_relay_refusing_us_fails_over_and_back_with_nothing_dead(
    api: AsyncTestClient[Any],
    mta: PostfixServer,
    sink: MailSink,
    fallback: MailSink,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_url: str,
) -> None:
    """The primary is a real Postfix that starts refusing us (`554 5.7.1 Relay access
    denied`): the fallback takes every e-mail in the same attempt, nothing is dead-lettered,
    and once the relay is fixed the mail goes through Postfix again."""
    monkeypatch.setenv("SSL_CERT_FILE", str(mta.ca_path))  # the notifier verifies Postfix
    await asyncio.to_thread(mta.deny_relay)
    settings = two_providers(
        database_url, redis_url, mta.url, fallback.url, ACME_SMTP_HELO_NAME="notifier.acme.test"
    )
    async with running_replica(settings):
        await place(api, 5)
        await fallback.wait_for(5, timeout_s=15)
        assert await redis.xlen(DEAD_STREAM) == 0, "a relay refusing us dead-letters nothing"
        await asyncio.to_thread(mta.allow_relay)

        async def through_postfix_again() -> bool:
            await place(api, 1)
            await asyncio.sleep(0.1)  # the pace of the traffic that brings the probes
            return len(sink.messages) > 0

        await eventually(through_postfix_again, timeout_s=20, what="failback to Postfix")
        await eventually(lambda: nothing_pending(redis), what="everything acknowledged")
    assert await redis.xlen(DEAD_STREAM) == 0
