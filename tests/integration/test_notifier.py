"""The notifier on real Redis, PostgreSQL and an aiosmtpd server: every e-mail, once."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import pytest
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_cli.smtp_sink import MailSink
from acme_notify.render import order_reference
from acme_orders.settings import OrdersSettings
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM
from acme_runtime.consumers import ensure_group
from tests.harness import (
    api_client,
    eventually,
    notify_env,
    notify_settings,
    running_order_workers,
    running_replica,
    start_notifier_process,
)
from tests.integration.test_api import ORDER

pytestmark = pytest.mark.slow

ORDER_EN: dict[str, Any] = {
    **ORDER,
    "customer": {"name": "John Smith", "email": "john@example.com", "locale": "en-US"},
    "currency": "USD",
}


@pytest.fixture
async def api(orders_settings: OrdersSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with (
        api_client(orders_settings) as client,
        running_order_workers(orders_settings),
    ):
        yield client


async def nothing_pending(redis: Redis) -> bool:
    """Every entry the notifiers read is acknowledged: none is left to claim and send."""
    summary: Any = await redis.xpending(EVENTS_STREAM, "notifier")
    return int(summary["pending"]) == 0


async def order_status(api: AsyncTestClient[Any], order_id: str) -> dict[str, Any]:
    response = await api.get(f"/orders/{order_id}")
    body: dict[str, Any] = response.json()
    return body


async def test_happy_path_delivers_both_locales_with_correct_headers(
    api: AsyncTestClient[Any], sink: MailSink, database_url: str, redis_url: str
) -> None:
    """POST /orders -> one multipart e-mail per order, in the customer's language; status sent."""
    settings = notify_settings(database_url, redis_url, sink.url)
    async with running_replica(settings):
        pt = (await api.post("/orders", json=ORDER)).json()
        en = (await api.post("/orders", json=ORDER_EN)).json()
        messages = await sink.wait_for(2, timeout_s=10)
        by_order = {m.order_id: m for m in messages}
        assert set(by_order) == {pt["id"], en["id"]}

        pt_mail = by_order[pt["id"]].parsed()
        assert pt_mail["To"].addresses[0].addr_spec == "ana@example.com"
        assert "Ana Souza" in str(pt_mail["To"])
        assert order_reference(pt["id"]) in pt_mail["Subject"]
        assert pt_mail["Message-ID"] and pt_mail["Date"]
        assert pt_mail.get_content_type() == "multipart/alternative"
        parts = {p.get_content_type(): p.get_content() for p in pt_mail.iter_parts()}
        assert set(parts) == {"text/plain", "text/html"}
        assert "R$" in parts["text/plain"] and "Caneca" in parts["text/html"]
        en_mail = by_order[en["id"]].parsed()
        en_text = next(
            p.get_content() for p in en_mail.iter_parts() if p.get_content_type() == "text/plain"
        )
        assert "John Smith" in en_text and "$" in en_text

        async def both_sent() -> bool:
            statuses = [
                (await order_status(api, o["id"]))["notification"]["status"] for o in (pt, en)
            ]
            return statuses == ["sent", "sent"]

        await eventually(both_sent, what="sent receipts applied")
        order = await order_status(api, pt["id"])
        assert order["notification"]["attempts"] == 1
        assert [e["kind"] for e in order["timeline"]][-1] == "sent"


async def test_replica_killed_mid_batch_loses_nothing_and_sends_once(
    api: AsyncTestClient[Any], sink: MailSink, database_url: str, redis_url: str, redis: Redis
) -> None:
    """A replica SIGKILLed mid-send loses nothing: another claims its entries, each sent once."""

    held = released = 0  # RCPTs the slow server holds, and those that have ended

    async def slow(_address: str) -> None:
        nonlocal held, released
        held += 1
        try:
            await asyncio.sleep(3)  # the fault: a slow server holding each send at RCPT
        finally:
            released += 1  # answered, or cut off when the connection died

    sink.rcpt_policy = slow  # stalls before any message data is sent
    order_ids = [(await api.post("/orders", json=ORDER)).json()["id"] for _ in range(10)]
    doomed = start_notifier_process(
        notify_env(
            database_url,
            redis_url,
            sink.url,
            ACME_CONSUMER_NAME="doomed",
            ACME_NOTIFY_CONCURRENCY="10",
            ACME_SMTP_POOL_SIZE="10",
            ACME_SMTP_TIMEOUT_S="10",
            ACME_NOTIFY_GRACE_S="15",
            ACME_METRICS_PORT="0",
        )
    )
    try:

        async def all_in_flight() -> bool:
            try:
                summary: Any = await redis.xpending(EVENTS_STREAM, "notifier")
            except ResponseError:  # the group is not created yet
                return False
            return int(summary["pending"]) == 10 and held == 10

        await eventually(
            all_in_flight, timeout_s=20, what="the doomed replica to hold all ten at RCPT"
        )
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)

    async def sessions_over() -> bool:
        return released == held

    # Each of the doomed replica's sessions ended server-side (its RCPT cut off when the kill
    # closed the connection), so the sink has seen all that replica will ever send.
    await eventually(sessions_over, what="the stalled RCPTs to end server-side")
    assert len(sink.messages) == 0, "the kill came before any message data was sent"
    sink.rcpt_policy = None
    survivor = notify_settings(database_url, redis_url, sink.url, ACME_CONSUMER_NAME="survivor")
    async with running_replica(survivor):
        await sink.wait_for(10, timeout_s=15)
        await eventually(
            partial(nothing_pending, redis), what="the survivor to acknowledge all ten"
        )
    # No entry is left to claim and send again, and leaving the block drained the survivor's
    # sends in flight: a duplicate would be in the sink by now.
    assert sorted(m.order_id for m in sink.messages) == sorted(order_ids)


@pytest.mark.parametrize(
    ("reply", "second_gap_s"),
    [
        # A message-level refusal uses up budget: the backoff doubles (200 ms, then 400 ms).
        ("451 4.3.0 local error in processing", 0.4),
        # "Service not available" is the server being down: the try is refunded, so the
        # backoff stays at its base and the e-mail's budget is kept for e-mail problems.
        ("421 4.3.2 try again later", 0.2),
    ],
)
async def test_transient_refusals_are_retried_with_backoff_then_delivered(
    api: AsyncTestClient[Any],
    sink: MailSink,
    database_url: str,
    redis_url: str,
    reply: str,
    second_gap_s: float,
) -> None:
    """A server refusing for a while (4xx) gets the e-mail once it recovers, on the 3rd try."""
    attempts: list[float] = []

    def busy_for_a_while(_envelope: SmtpEnvelope) -> str | None:
        attempts.append(time.monotonic())
        return reply if len(attempts) <= 2 else None

    sink.policy = busy_for_a_while
    settings = notify_settings(database_url, redis_url, sink.url, ACME_BREAKER_FAILURES="10")
    async with running_replica(settings):
        order_id = (await api.post("/orders", json=ORDER)).json()["id"]
        [message] = await sink.wait_for(1, timeout_s=15)
        assert message.order_id == order_id

        async def sent() -> bool:
            return (await order_status(api, order_id))["notification"]["status"] == "sent"

        await eventually(sent, what="the sent receipt")
    order = await order_status(api, order_id)
    assert order["notification"]["attempts"] == 3
    kinds = [e["kind"] for e in order["timeline"]]
    assert kinds.count("attempt_failed") == 2
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # The backoff runs from each claim (Redis idle time); the sink sees each try a little
    # after its claim, and the first try also opens the SMTP connection, so a gap may come out
    # a few milliseconds under the backoff itself.
    slack_s = 0.025
    assert gaps[0] >= 0.2 - slack_s, gaps
    assert gaps[1] >= second_gap_s - slack_s, gaps


async def test_smtp_550_is_dead_lettered_at_once(
    api: AsyncTestClient[Any], sink: MailSink, database_url: str, redis_url: str, redis: Redis
) -> None:
    """A permanent rejection goes to the dead stream with its reason; the order shows dead."""
    sink.policy = lambda _e: "550 5.1.1 mailbox unknown"
    settings = notify_settings(database_url, redis_url, sink.url)
    async with running_replica(settings):
        order_id = (await api.post("/orders", json=ORDER)).json()["id"]

        async def dead() -> bool:
            return (await order_status(api, order_id))["notification"]["status"] == "dead"

        await eventually(dead, what="the dead receipt")
    [(_dead_id, fields)] = await redis.xrange(DEAD_STREAM)
    assert fields[b"order_id"].decode() == order_id
    assert fields[b"reason_class"] == b"invalid_recipient"
    assert b"550" in fields[b"reason"] and fields[b"deliveries"] == b"1"
    order = await order_status(api, order_id)
    assert "550" in order["notification"]["detail"]
    assert len(sink.messages) == 0


async def test_poison_entry_is_dead_lettered_and_the_flow_continues(
    api: AsyncTestClient[Any], sink: MailSink, database_url: str, redis_url: str, redis: Redis
) -> None:
    """Garbage on the stream is dead-lettered with the reason; the next order is still sent."""
    settings = notify_settings(database_url, redis_url, sink.url)
    async with running_replica(settings):
        # Idempotent: the replica may have made the group already (it raced this line once).
        await ensure_group(redis, EVENTS_STREAM, "notifier")
        await redis.xadd(EVENTS_STREAM, {"v": "1", "data": b"{not json"})
        await redis.xadd(EVENTS_STREAM, {"v": "99", "data": b"{}"})
        order_id = (await api.post("/orders", json=ORDER)).json()["id"]
        [message] = await sink.wait_for(1, timeout_s=10)
        assert message.order_id == order_id

        async def two_dead() -> bool:
            return int(await redis.xlen(DEAD_STREAM)) == 2

        await eventually(two_dead, what="two poison entries in the dead stream")
    dead = await redis.xrange(DEAD_STREAM)
    reasons = sorted(fields[b"reason"].decode() for _id, fields in dead)
    assert "undecodable envelope" in reasons[1] or "undecodable envelope" in reasons[0]
    assert any("unsupported schema version '99'" in r for r in reasons)
    assert {fields[b"reason_class"] for _id, fields in dead} == {b"poison"}


async def test_redelivered_event_already_sent_is_not_sent_again(
    api: AsyncTestClient[Any],
    sink: MailSink,
    database_url: str,
    redis_url: str,
    redis: Redis,
    pool: asyncpg.Pool,
) -> None:
    """The same event arriving again (a re-drive after Redis lost data) sends no second e-mail."""
    settings = notify_settings(database_url, redis_url, sink.url)
    async with running_replica(settings):
        await api.post("/orders", json=ORDER)
        await sink.wait_for(1, timeout_s=10)
        [(_id, fields)] = await redis.xrange(EVENTS_STREAM)
        again = await redis.xadd(EVENTS_STREAM, fields)  # the very same event, a second time

        async def all_acked() -> bool:
            summary: Any = await redis.xpending(EVENTS_STREAM, "notifier")
            info: Any = await redis.xinfo_groups(EVENTS_STREAM)
            return int(summary["pending"]) == 0 and info[0]["last-delivered-id"] == again

        await eventually(all_acked, what="the duplicate to be acknowledged")
    # The notifier acknowledges an entry only after SMTP answered its e-mail, the sink keeps a
    # message before answering, and leaving the block drained any send in flight: a second
    # e-mail would be in the sink by now.
    assert len(sink.messages) == 1
    assert await pool.fetchval("SELECT count(*) FROM notify.sent_ledger") == 1


async def test_a_copy_read_while_the_first_is_being_sent_waits_and_sends_nothing(
    api: AsyncTestClient[Any],
    sink: MailSink,
    database_url: str,
    redis_url: str,
    redis: Redis,
) -> None:
    """Two copies of one event in one replica at once (a re-drive, or a delivery a failed-over
    Redis forgot): the second waits for the first's ledger row instead of racing it."""
    answered = asyncio.Event()

    async def slow_250(_envelope: object) -> None:
        await asyncio.sleep(0.5)  # the first copy's DATA is in; its 250 is still to come
        answered.set()

    sink.policy = slow_250
    settings = notify_settings(database_url, redis_url, sink.url)
    async with running_replica(settings):
        await api.post("/orders", json=ORDER)

        async def published() -> bool:
            return await redis.xlen(EVENTS_STREAM) == 1

        await eventually(published, what="the event on the stream")
        [(_id, fields)] = await redis.xrange(EVENTS_STREAM)
        copy = await redis.xadd(EVENTS_STREAM, fields)
        assert not answered.is_set(), "the copy went on the stream while the first was sending"

        async def both_acked() -> bool:
            if not await redis.exists(EVENTS_STREAM) or not await redis.xinfo_groups(EVENTS_STREAM):
                return False  # the replica's reader has not made its group yet
            summary: Any = await redis.xpending(EVENTS_STREAM, "notifier")
            info: Any = await redis.xinfo_groups(EVENTS_STREAM)
            return int(summary["pending"]) == 0 and info[0]["last-delivered-id"] == copy

        await eventually(both_acked, what="both copies to be acknowledged")
    assert len(sink.messages) == 1


async def test_smtp_outage_burns_no_delivery_budget_and_the_backlog_drains(
    api: AsyncTestClient[Any], database_url: str, redis_url: str, redis: Redis
) -> None:
    """With SMTP refusing connections for longer than the whole retry schedule, nothing is
    dead-lettered: the breaker holds the replicas back, and everything is sent on recovery."""
    sink = MailSink(None)
    await sink.start()
    port = sink.port
    await sink.stop()  # connection refused from here on
    settings = notify_settings(
        database_url, redis_url, f"smtp://127.0.0.1:{port}", ACME_BREAKER_FAILURES="3"
    )
    order_ids = [(await api.post("/orders", json=ORDER)).json()["id"] for _ in range(20)]
    async with running_replica(settings) as replica:
        # The outage itself: SMTP stays down for 4 s, ~3x the whole retry schedule (200, 400,
        # 800 ms between 4 deliveries), so without the breaker all would be dead-lettered by now.
        await asyncio.sleep(4.0)
        assert replica.delivery.breaker.state in ("open", "half_open")
        assert await redis.xlen(DEAD_STREAM) == 0
        pending: Any = await redis.xpending_range(EVENTS_STREAM, "notifier", "-", "+", 100)
        assert max((int(p["times_delivered"]) for p in pending), default=0) <= 1
        back = MailSink(None, port=port)
        await back.start()
        try:
            await back.wait_for(20, timeout_s=15)

            async def all_done() -> bool:
                return not replica.processor.in_flight and await nothing_pending(redis)

            # Nothing left to claim and no send in flight: no e-mail can reach `back` any more.
            await eventually(all_done, what="all twenty acknowledged and no send in flight")
        finally:
            await back.stop()
    assert sorted(m.order_id for m in back.messages) == sorted(order_ids)
    assert await redis.xlen(DEAD_STREAM) == 0


async def test_due_retries_deep_in_a_long_pending_list_are_claimed(redis: Redis) -> None:
    """The claimer walks the pending list window by window, not only its first `scan` entries."""
    from acme_notify.streams import Streams

    streams = Streams(redis, "walker")
    await streams.ensure_group()
    for n in range(30):
        await redis.xadd(EVENTS_STREAM, {"v": "1", "n": str(n)})
    owner = Streams(redis, "owner")
    await owner.read_new(30, 10)
    claimed: set[str] = set()
    for _ in range(10):
        # The retry backoff: longer than its 1 ms cap, so every pending entry is due again.
        await asyncio.sleep(0.02)
        result = await streams.claim_due(
            base_ms=1, cap_ms=1, jitter=0, max_deliveries=9, limit=4, scan=5
        )
        claimed |= {entry[0] for entry in result.claimed}
    assert len(claimed) == 30, f"claimed {len(claimed)} of 30 with windows of 5"


async def test_departed_consumers_are_pruned_but_never_one_with_pending_entries(
    redis: Redis,
) -> None:
    """Idle names with nothing pending go; a name still owning entries stays, so none is lost."""
    from acme_notify.streams import Streams
    from acme_runtime.consumers import prune_consumers

    await Streams(redis, "x").ensure_group()
    for _ in range(3):
        await redis.xadd(EVENTS_STREAM, {"v": "1"})
    await Streams(redis, "holds-one").read_new(1, 10)
    [(done_id, *_rest)] = await Streams(redis, "left-empty").read_new(1, 10)
    await redis.xack(EVENTS_STREAM, "notifier", done_id)  # its work is finished
    await Streams(redis, "me").read_new(1, 10)
    gone = await prune_consumers(redis, EVENTS_STREAM, "notifier", min_idle_ms=0, keep="me")
    assert gone == ["left-empty"]
    names = {c["name"] for c in await redis.xinfo_consumers(EVENTS_STREAM, "notifier")}
    assert names == {b"holds-one", b"me"} or names == {"holds-one", "me"}
