"""A stateful model of delivery: every event ends sent once or dead, whatever happens on the way.

A Hypothesis `RuleBasedStateMachine` drives the notifier's building blocks (Streams, Processor,
SendLedger, Renderer, Delivery over an SmtpPool and a CircuitBreaker) for three replicas sharing
one real Redis, one real PostgreSQL and one real SMTP sink, step by step instead of as running
actors, so that a run is fast and does not depend on timing (the breakers run on a manual clock,
and a claim first waits out the longest backoff). Rules publish events (and re-driven duplicates
and poison), deliver, crash after reading, claim due retries, reap exhausted entries, and break
or heal SMTP (down, greylisting, rejecting one message, refusing us with `Relay access denied`,
accepting with odd `250` replies). At the end SMTP comes back, everything is drained, and
every event must have ended exactly once: one e-mail and one ledger row, or a dead letter.

The machine is synchronous: it owns one event loop (created in `__init__`, closed in
`teardown`), runs each async step with `run_until_complete`, and creates its clients inside it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from typing import Any, TypeVar

import asyncpg
import pytest
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from acme_cli.smtp_sink import MailSink
from acme_notify.delivery import Delivery
from acme_notify.flow import CircuitBreaker
from acme_notify.ledger import SendLedger
from acme_notify.processor import Processor
from acme_notify.render import Renderer
from acme_notify.smtp import SmtpConfig, SmtpPool
from acme_notify.streams import RawEntry, Streams
from acme_notify.telemetry import NotifyMetrics
from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.events import build_envelope, encode_envelope
from acme_orders.publisher import publish_batch
from acme_orders.store import OutboxEvent
from acme_runtime.channels import (
    DEAD_STREAM,
    EVENTS_STREAM,
    NOTIFIER_GROUP,
    RECEIPTS_STREAM,
    published_key,
)
from acme_runtime.ids import uuid7
from tests.integration.test_api import ORDER

pytestmark = pytest.mark.slow

T = TypeVar("T")

REPLICAS = ("notifier-a", "notifier-b", "notifier-c")
MAX_DELIVERIES = 3
BACKOFF_BASE_MS = 1
BACKOFF_CAP_MS = 4
CONCURRENCY = 4
BREAKER_FAILURES = 3
BREAKER_COOLDOWN_S = 1.0  # on the machine's own clock, which only `time_passes` advances
BREAKER_MAX_COOLDOWN_S = 4.0
DEDUPE_TTL_S = 600
DRAIN_ROUNDS = 200

# The orders behind the events, by the locale of their e-mail (short names in a repro).
ORDERS: dict[str, dict[str, Any]] = {
    "pt-BR": ORDER,
    "en-US": {
        **ORDER,
        "customer": {"name": "John Smith", "email": "john@example.com", "locale": "en-US"},
        "currency": "USD",
    },
}
locales = st.lists(st.sampled_from(sorted(ORDERS)), min_size=1, max_size=3)

# Malformed stream entries, each one way of being unusable.
POISON_KINDS: dict[str, dict[str, bytes | str]] = {
    "not_json": {"v": "1", "data": b"{not json"},
    "future_version": {"v": "99", "data": b"{}"},
    "no_version": {"data": b"{}"},
    "no_data": {"v": "1"},
    "not_utf8": {"v": "1", "data": b"\xff\xfe\x00"},
}

DOWN_REPLY = "421 4.3.0 down"
REJECT_REPLY = "550 5.1.1 mailbox unknown"
GREYLIST_REPLY = "450 4.2.0 greylisted, try later"
#: 250 replies real relays send that once made the notifier resend for ever.
ODD_250S = (
    b"250 2.0.0 Ok: queued as \x00ABC",
    b"250 2.0.0 accept\xe9",
    b"250-2.0.0 first\r\n250 2.0.0 second",
    b"250 2.0.0 " + b"x" * 900,
)


def _draft(order: dict[str, Any]) -> OrderDraft:
    parsed = parse_order(order)
    assert isinstance(parsed, OrderDraft)
    return parsed


def _new_event(order: dict[str, Any]) -> OutboxEvent:
    event_id, order_id, now = uuid7(), uuid7(), datetime.now(UTC)
    envelope = build_envelope(
        event_id=str(event_id),
        order_id=str(order_id),
        draft=_draft(order),
        created_at=now,
        traceparent=None,
    )
    return OutboxEvent(event_id, order_id, encode_envelope(envelope))


def _sid(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class ReplicaUnderTest:
    """One notifier replica's building blocks, without its actors."""

    streams: Streams
    delivery: Delivery
    processor: Processor

    def capacity(self) -> int:
        """What the consumer and the claimer would take now (0 while the breaker is open)."""
        return self.delivery.capacity(self.processor.free_slots)


@dataclass(frozen=True)
class Urls:
    database: str
    redis: str


class DeliveryMachine(RuleBasedStateMachine):
    """Replicas delivering, crashing, retrying and dead-lettering over real Redis, PG and SMTP."""

    events = Bundle("events")

    def __init__(self, urls: Urls) -> None:
        super().__init__()
        self.urls = urls
        self.loop = asyncio.new_event_loop()
        # The model: how many stream entries each event has, the poison entries (by entry id),
        # and which entries some replica has handled (not just read or claimed, then crashed).
        self.copies: Counter[str] = Counter()
        self.poison: dict[str, str] = {}
        self.handled: set[str] = set()
        self.relay_down = False
        self.reject_next = False
        self.greylisting = False
        self.refusing_us = False
        # The breakers' clock: a manual one, so that a run does not depend on how fast it runs.
        self.now = 0.0
        try:
            self._run(self._setup())
        except BaseException:
            self._run(self._close_clients())
            self.loop.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> None:
        self.redis: Redis | None = None
        self.pool: asyncpg.Pool | None = None
        self.sink: MailSink | None = None
        self.replicas: list[ReplicaUnderTest] = []
        # One database per test, one machine run after another: each run starts empty.
        self.pool = await asyncpg.create_pool(self.urls.database, min_size=1, max_size=3)
        await self.pool.execute("TRUNCATE notify.sent_ledger")
        self.redis = Redis.from_url(self.urls.redis)
        await self.redis.flushall()
        self.sink = MailSink(None, policy=self._data_policy, rcpt_policy=self._rcpt_policy)
        await self.sink.start()
        ledger = SendLedger(self.pool)
        renderer = Renderer("AcME Store <pedidos@acme.example>", "acme.example")
        for name in REPLICAS:
            streams = Streams(self.redis, name)
            smtp = SmtpPool(SmtpConfig.from_url(self.sink.url, timeout_s=5, pool_size=2))
            breaker = CircuitBreaker(
                BREAKER_FAILURES,
                BREAKER_COOLDOWN_S,
                max_cooldown_s=BREAKER_MAX_COOLDOWN_S,
                clock=self._clock,
            )
            delivery = Delivery(smtp, breaker, self.redis, consumer=name)
            processor = Processor(
                streams=streams,
                ledger=ledger,
                renderer=renderer,
                send=delivery.send,
                concurrency=CONCURRENCY,
                max_deliveries=MAX_DELIVERIES,
                metrics=NotifyMetrics(),
            )
            self.replicas.append(ReplicaUnderTest(streams, delivery, processor))
        await self.replicas[0].streams.ensure_group()

    async def _close_clients(self) -> None:
        for replica in getattr(self, "replicas", []):
            await replica.delivery.pool.close()
        sink = getattr(self, "sink", None)
        if sink is not None:
            await sink.stop()
        pool = getattr(self, "pool", None)
        if pool is not None:
            await pool.close()
        redis = getattr(self, "redis", None)
        if redis is not None:
            await redis.aclose()

    def _clock(self) -> float:
        return self.now

    def _data_policy(self, _envelope: SmtpEnvelope) -> str | None:
        if self.relay_down:
            return DOWN_REPLY
        if self.reject_next:
            self.reject_next = False
            return REJECT_REPLY
        return None

    def _rcpt_policy(self, address: str) -> str | None:
        if self.refusing_us:
            return f"554 5.7.1 <{address}>: Relay access denied"
        return GREYLIST_REPLY if self.greylisting else None

    @property
    def _redis(self) -> Redis:
        assert self.redis is not None
        return self.redis

    @property
    def _pool(self) -> asyncpg.Pool:
        assert self.pool is not None
        return self.pool

    @property
    def _sink(self) -> MailSink:
        assert self.sink is not None
        return self.sink

    async def _read_new(self, replica: ReplicaUnderTest, count: int) -> list[RawEntry]:
        # Only when something is unread: Redis times a BLOCK out at its `hz` resolution
        # (~100 ms), which would make every empty read that slow.
        if count <= 0 or not await self._unread():
            return []
        return await replica.streams.read_new(count, block_ms=1)

    async def _deliver(self, replica: ReplicaUnderTest, count: int) -> int:
        """The consumer's step: read as many new entries as it may take, handle each."""
        take = min(count, replica.capacity())
        if take <= 0:
            return 0
        entries = await self._read_new(replica, take)
        for entry in entries:
            self.handled.add(entry[0])
            await replica.processor.handle(entry)
        return len(entries)

    async def _claim(self, replica: ReplicaUnderTest, *, crash: bool = False) -> int:
        """The claimer's step: take the due retries it may take, handle each (or die)."""
        take = replica.capacity()
        if take <= 0 or await self._pending() == 0:
            return 0
        # Past the longest backoff: every pending entry with deliveries left is due, so what a
        # claim takes does not depend on timing.
        await asyncio.sleep((BACKOFF_CAP_MS + 2) / 1000)
        result = await replica.streams.claim_due(
            base_ms=BACKOFF_BASE_MS,
            cap_ms=BACKOFF_CAP_MS,
            jitter=0.0,
            max_deliveries=MAX_DELIVERIES,
            limit=take,
        )
        assert result.missing == [], f"pending entries vanished from the stream: {result.missing}"
        for entry in result.claimed:
            assert 2 <= entry[2] <= MAX_DELIVERIES, f"claimed with {entry[2]} deliveries"
            if not crash:
                self.handled.add(entry[0])
                await replica.processor.handle(entry)
        return len(result.claimed)

    async def _reap(self) -> int:
        """The reaper's step: dead-letter what used up its deliveries, trim acknowledged."""
        streams = self.replicas[0].streams
        reaped = 0
        found = await streams.reap_round(
            lock_ms=1_000, max_deliveries=MAX_DELIVERIES, min_idle_ms=0, retention_ms=0
        )
        assert found is not None, "the only reaper was refused its own lock"
        for entry_id in found.exhausted:
            dead_id = await streams.dead_letter(
                entry_id,
                reason_class="max_deliveries",
                reason=f"not delivered after {MAX_DELIVERIES} attempts",
                min_deliveries=MAX_DELIVERIES,
            )
            assert dead_id is not None, f"exhausted entry {entry_id} was not dead-lettered"
            reaped += 1
        return reaped

    async def _pending(self) -> int:
        summary: Any = await self._redis.xpending(EVENTS_STREAM, NOTIFIER_GROUP)
        return int(summary["pending"])

    async def _unread(self) -> bool:
        last: Any = await self._redis.xrevrange(EVENTS_STREAM, count=1)
        if not last:
            return False
        groups: Any = await self._redis.xinfo_groups(EVENTS_STREAM)
        [group] = [g for g in groups if g["name"] in (NOTIFIER_GROUP, NOTIFIER_GROUP.encode())]
        return _sid(group["last-delivered-id"]) < _sid(last[0][0])

    def _emails_by_event(self) -> Counter[str]:
        parser = BytesHeaderParser()
        return Counter(
            str(parser.parsebytes(m.data)["X-Acme-Event-Id"]).strip() for m in self._sink.messages
        )

    async def _ledger(self) -> dict[str, str]:
        rows = await self._pool.fetch("SELECT event_id, message_id FROM notify.sent_ledger")
        return {str(r["event_id"]): r["message_id"] for r in rows}

    # -- rules ------------------------------------------------------------------------------

    def _publish(self, locales: list[str]) -> MultipleResults[OutboxEvent]:
        batch = [_new_event(ORDERS[locale]) for locale in locales]
        results = self._run(publish_batch(self._redis, batch, dedupe_ttl_s=DEDUPE_TTL_S))
        assert [r.added for r in results] == [True] * len(batch), "a new event not added"
        for event in batch:
            self.copies[str(event.event_id)] += 1
        return multiple(*batch)

    @initialize(target=events, orders=locales)
    def first_orders(self, orders: list[str]) -> MultipleResults[OutboxEvent]:
        """Every run starts with a few events on the stream."""
        return self._publish(orders)

    @rule(target=events, orders=locales)
    def publish(self, orders: list[str]) -> MultipleResults[OutboxEvent]:
        """New events reach the stream through the order service's publish-once path."""
        return self._publish(orders)

    @rule(event=events, key_lost=st.booleans())
    def publish_duplicate(self, event: OutboxEvent, key_lost: bool) -> None:
        """A re-drive adds the event again only when Redis lost its publish-once key."""
        if key_lost:  # Redis lost data: the dedupe key is gone, the re-drive adds a copy
            self._run(self._redis.delete(published_key(str(event.event_id))))
        before = self._run(self._redis.xlen(EVENTS_STREAM))
        [published] = self._run(publish_batch(self._redis, [event], dedupe_ttl_s=DEDUPE_TTL_S))
        added = published.added
        after = self._run(self._redis.xlen(EVENTS_STREAM))
        assert added == key_lost, "publish-once added a copy while its key still existed"
        assert after - before == (1 if key_lost else 0)
        if added:
            self.copies[str(event.event_id)] += 1

    @rule(kind=st.sampled_from(sorted(POISON_KINDS)))
    def publish_poison(self, kind: str) -> None:
        """A malformed entry lands on the stream."""
        fields = {**POISON_KINDS[kind], "poison_tag": kind}
        entry_id = self._run(self._redis.xadd(EVENTS_STREAM, fields))  # type: ignore[arg-type]
        self.poison[entry_id.decode()] = kind

    @rule(replica=st.integers(0, len(REPLICAS) - 1), count=st.integers(1, CONCURRENCY))
    def deliver(self, replica: int, count: int) -> None:
        """A replica reads new entries and handles each to its outcome."""
        self._run(self._deliver(self.replicas[replica], count))

    @rule(replica=st.integers(0, len(REPLICAS) - 1), count=st.integers(1, CONCURRENCY))
    def crash(self, replica: int, count: int) -> None:
        """A replica reads new entries and dies before handling them."""
        r = self.replicas[replica]

        async def read_and_drop() -> None:
            await self._read_new(r, min(count, r.capacity()))

        self._run(read_and_drop())

    @rule(replica=st.integers(0, len(REPLICAS) - 1))
    def claim(self, replica: int) -> None:
        """A replica claims the retries that are due and handles each to its outcome."""
        self._run(self._claim(self.replicas[replica]))

    @rule(replica=st.integers(0, len(REPLICAS) - 1))
    def crash_after_claim(self, replica: int) -> None:
        """A replica claims the retries that are due and dies before handling them."""
        self._run(self._claim(self.replicas[replica], crash=True))

    @rule()
    def reap(self) -> None:
        """The reaper dead-letters entries that used up their deliveries."""
        self._run(self._reap())

    @rule()
    def time_passes(self) -> None:
        """A breaker cooldown goes by: an open breaker lets one probe through."""
        self.now += BREAKER_COOLDOWN_S

    @rule()
    def smtp_down(self) -> None:
        """The relay answers every message with 421 (server down)."""
        self.relay_down = True

    @rule()
    def smtp_up(self) -> None:
        """The relay accepts messages again."""
        self.relay_down = False

    @rule()
    def smtp_reject_next(self) -> None:
        """The relay permanently rejects the next message (550 5.1.1)."""
        self.reject_next = True

    @rule(on=st.booleans())
    def relay_refuses_us(self, on: bool) -> None:
        """The relay starts or stops refusing us (554 5.7.1 Relay access denied at every RCPT):
        a refusal about us, which must never dead-letter an event."""
        self.refusing_us = on

    @rule(reply=st.sampled_from(ODD_250S))
    def smtp_answers_oddly(self, reply: bytes) -> None:
        """From now on the relay accepts with an odd 250 (NUL, Latin-1, lines, 900 chars)."""
        self._sink.accepted_reply = reply

    @rule(on=st.booleans())
    def smtp_greylist(self, on: bool) -> None:
        """The relay starts or stops refusing recipients for now (450 at RCPT, server up)."""
        self.greylisting = on

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def at_most_one_email_per_event_and_it_is_in_the_ledger(self) -> None:
        """No event is ever e-mailed twice, and every e-mail has its ledger row."""
        emails = self._emails_by_event()
        twice = {event_id: n for event_id, n in emails.items() if n > 1}
        assert not twice, f"events e-mailed more than once: {twice}"
        assert set(emails) <= set(self.copies), "an e-mail for an event never published"
        ledger = self._run(self._ledger())
        assert set(ledger) == set(emails), "ledger and sent e-mails disagree"

    # -- the end: drain, then account for every event -----------------------------------------

    async def _drain(self) -> None:
        """SMTP up; claim, deliver and reap until nothing is pending and nothing is unread."""
        self.relay_down = self.reject_next = self.greylisting = self.refusing_us = False
        for _round in range(DRAIN_ROUNDS):
            if await self._pending() == 0 and not await self._unread():
                return
            self.now += BREAKER_MAX_COOLDOWN_S  # any open breaker lets a probe through
            for replica in self.replicas:
                await self._claim(replica)
                await self._deliver(replica, CONCURRENCY)
            await self._reap()
        pending, unread = await self._pending(), await self._unread()
        raise AssertionError(f"not drained after {DRAIN_ROUNDS} rounds: {pending=} {unread=}")

    async def _final_check(self) -> None:
        await self._drain()
        assert await self._pending() == 0, "the events group still has pending entries"

        emails = self._emails_by_event()
        message_ids = {
            str(BytesHeaderParser().parsebytes(m.data)["X-Acme-Event-Id"]).strip(): m.message_id
            for m in self._sink.messages
        }
        ledger = await self._ledger()
        dead: Counter[str] = Counter()
        dead_poison: dict[str, list[bytes]] = {}
        for _id, fields in await self._redis.xrange(DEAD_STREAM):
            reason_class = fields[b"reason_class"]
            if b"poison_tag" in fields:
                original = fields[b"original_id"].decode()
                dead_poison.setdefault(original, []).append(reason_class)
                continue
            assert b"event_id" in fields, f"a dead entry of no known kind: {fields}"
            dead[fields[b"event_id"].decode()] += 1
            # A valid event dies only of a 550 or of its used-up delivery budget.
            assert reason_class in (b"invalid_recipient", b"max_deliveries"), fields
            if reason_class == b"max_deliveries":
                assert int(fields[b"deliveries"]) == MAX_DELIVERIES, fields
        receipts: dict[bytes, Counter[str]] = {b"sent": Counter(), b"dead": Counter()}
        for _id, fields in await self._redis.xrange(RECEIPTS_STREAM):
            if fields[b"type"] in receipts:
                receipts[fields[b"type"]][fields[b"event_id"].decode()] += 1
        sent_receipts = receipts[b"sent"]

        assert set(dead) <= set(self.copies), "a dead letter for an event never published"
        for event_id, copies in self.copies.items():
            sent, died = emails[event_id], dead[event_id]
            assert sent <= 1, f"{event_id}: e-mailed {sent} times"
            assert sent + died >= 1, f"{event_id}: lost (neither sent nor dead)"
            if copies == 1:
                assert sent + died == 1, f"{event_id}: both sent and dead-lettered"
            # Every stream entry of the event ended exactly once: acknowledged or dead.
            assert sent_receipts[event_id] + died == copies, (
                f"{event_id}: {copies} entries but {sent_receipts[event_id]} sent receipts"
                f" and {died} dead letters"
            )
            assert receipts[b"dead"][event_id] == died, f"{event_id}: dead receipts"
            if sent_receipts[event_id]:
                assert sent == 1, f"{event_id}: acknowledged as sent without an e-mail"
            if sent:
                assert ledger.get(event_id) == message_ids[event_id], f"{event_id}: ledger row"
            else:
                assert event_id not in ledger, f"{event_id}: ledger row without an e-mail"
        # Poison is dead-lettered as such when first handled; one that only ever crashed its
        # readers used up its deliveries instead.
        assert dead_poison == {
            entry_id: [b"poison" if entry_id in self.handled else b"max_deliveries"]
            for entry_id in self.poison
        }, "poison not dead-lettered exactly once, for its reason"

    def teardown(self) -> None:
        try:
            self._run(self._final_check())
        finally:
            try:
                self._run(self._close_clients())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()


# A passing run takes seconds; a failing one may shrink for up to Hypothesis' 5 minutes.
@pytest.mark.timeout(600)
def test_every_event_ends_sent_once_or_dead(database_url: str, redis_url: str) -> None:
    """Whatever the faults, every event ends once: e-mailed and in the ledger, or dead-lettered."""
    run_state_machine_as_test(
        functools.partial(DeliveryMachine, Urls(database_url, redis_url)),  # type: ignore[arg-type]
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # One failure, shrunk quickly: each example talks to three real servers.
            report_multiple_bugs=False,
        ),
    )
