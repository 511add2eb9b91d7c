"""The breaker shared by replicas through Redis: open together, and let go together.

Real Redis and a real SMTP server; the breakers keep time on a manual clock, so a cooldown
passes when the test says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_cli.smtp_sink import MailSink
from acme_notify.delivery import Delivery
from acme_notify.errors import CircuitOpen, TransientError
from acme_notify.flow import CircuitBreaker
from acme_notify.ledger import SendLedger
from acme_notify.processor import Processor
from acme_notify.render import Renderer
from acme_notify.smtp import SmtpConfig, SmtpPool
from acme_notify.streams import Streams
from acme_notify.telemetry import NotifyMetrics
from acme_runtime.channels import EVENTS_STREAM, NOTIFIER_GROUP, RECEIPTS_STREAM
from tests.integration.test_bookkeeping import publish, read_all

pytestmark = pytest.mark.slow

SENDER = "pedidos@acme.example"
MESSAGE = b"From: <pedidos@acme.example>\r\nSubject: hi\r\n\r\nhello\r\n"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def replicas(redis: Redis, sink: MailSink) -> AsyncIterator[tuple[Delivery, Delivery, Clock]]:
    clock = Clock()
    pools = [
        SmtpPool(SmtpConfig.from_url(sink.url, timeout_s=2, pool_size=1, helo_name="n.acme.test"))
        for _ in range(2)
    ]
    a, b = (
        Delivery(pool, CircuitBreaker(2, 5.0, clock=clock), redis, consumer=name)
        for pool, name in zip(pools, ("a", "b"), strict=True)
    )
    yield a, b, clock
    for pool in pools:
        await pool.close()


async def test_a_replica_whose_probe_succeeds_releases_the_others_at_once(
    replicas: tuple[Delivery, Delivery, Clock], sink: MailSink
) -> None:
    """A opens (421s) and B follows; when A's probe goes through, B may probe at once instead
    of sitting out the cooldown A published."""
    a, b, clock = replicas
    sink.policy = lambda _envelope: "421 4.3.2 down for maintenance"
    for _ in range(2):
        with pytest.raises(TransientError):
            await a.send(SENDER, ["x@example.com"], MESSAGE)
    assert a.breaker.state == "open"
    await b.sync_shared()
    assert b.breaker.state == "open" and b.capacity(8) == 0, "B holds back with A"
    sink.policy = None
    clock.now += 5.0  # A's cooldown; B stays bound by the shared key's TTL (real seconds)
    assert a.capacity(8) == 1
    await a.send(SENDER, ["x@example.com"], MESSAGE)
    assert a.breaker.state == "closed"
    await b.sync_shared()
    assert b.breaker.state == "half_open" and b.capacity(8) == 1, "released by A's success"
    await b.send(SENDER, ["y@example.com"], MESSAGE)
    assert b.breaker.state == "closed"
    assert len(sink.messages) == 2


async def test_only_one_probe_is_out_while_half_open(
    replicas: tuple[Delivery, Delivery, Clock], sink: MailSink
) -> None:
    """Half-open lets exactly one entry be taken; a second send meets our own breaker."""
    a, _b, clock = replicas
    sink.policy = lambda _envelope: "421 4.3.2 down"
    for _ in range(2):
        with pytest.raises(TransientError):
            await a.send(SENDER, ["x@example.com"], MESSAGE)
    clock.now += 5.0
    assert a.capacity(8) == 1
    assert a.breaker.allow()  # the probe starts
    assert a.capacity(8) == 0, "no second entry while the probe is out"
    with pytest.raises(CircuitOpen):
        await a.send(SENDER, ["x@example.com"], MESSAGE)


async def test_a_send_our_own_breaker_holds_back_is_no_attempt(
    redis: Redis, pool: asyncpg.Pool, replicas: tuple[Delivery, Delivery, Clock], sink: MailSink
) -> None:
    """Held back by the open breaker: no receipt, no failure counted, the delivery given back."""
    a, _b, _clock = replicas
    a.breaker.force_open(float("inf"))
    metrics = NotifyMetrics()
    streams = Streams(redis, "a")
    processor = Processor(
        streams=streams,
        ledger=SendLedger(pool),
        renderer=Renderer("AcME <pedidos@acme.example>", "acme.example"),
        send=a.send,
        concurrency=1,
        max_deliveries=3,
        metrics=metrics,
    )
    await publish(redis)
    [entry] = await read_all(streams, 1)
    await redis.execute_command("XCLAIM", EVENTS_STREAM, NOTIFIER_GROUP, "a", 0, entry.entry_id)
    processor.submit(entry._replace(deliveries=2))
    await processor.drain()
    assert await redis.xlen(RECEIPTS_STREAM) == 0, "no attempt_failed receipt"
    [pending] = await redis.xpending_range(EVENTS_STREAM, NOTIFIER_GROUP, "-", "+", 1)
    assert int(pending["times_delivered"]) == 1, "the delivery was given back"
    failures = metrics.registry.get_sample_value(
        "acme_notify_send_failures_total", {"reason_class": "circuit_open"}
    )
    assert failures is None
    assert sink.messages == []
