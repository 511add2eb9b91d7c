"""Publishing outbox events to the Redis Stream, once each, and the API's fast path.

`publish_batch` is the one way events reach the stream: a pipeline of `publish_once.lua` calls,
one round trip per batch (per cluster node), each call idempotent. An event goes to its order's
shard (`acme_runtime.channels.shard_of`), or, once published, back to the shard it went to
first (`OutboxEvent.shard`), so a re-drive finds its publish-once key whatever
`ACME_STREAM_SHARDS` says now. The `FastPathPublisher` actor runs inside the API
process: the request handler hands it the event after commit and answers at once; the actor
publishes in batches and records the result. When Redis is slow or down it drops what it holds
(the rows stay unpublished) and the relay publishes them: the fast path is an optimisation,
never the guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final

import asyncpg
import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_orders.events import stream_fields
from acme_orders.store import OrderStore, OutboxEvent, Published
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.channels import shard, shard_of
from acme_runtime.lua import load_script
from acme_runtime.text import as_text
from acme_runtime.tracing import context_from_traceparent, tracer

__all__ = ["RECORD_LINGER_MS", "RELAY_WAKE_CHANNEL", "FastPathPublisher", "publish_batch"]

log = structlog.get_logger(__name__)


_PUBLISH_ATTRIBUTES: Final = {
    "messaging.system": "redis",
    "messaging.operation.type": "send",
    "messaging.operation.name": "XADD",
}

#: The fast path records its publishes in PostgreSQL (`mark_published`) at most this long after
#: making them, gathered into one statement: at the brief's peak that is ~20 orders per UPDATE
#: instead of one. Far below the relay's grace (ACME_RELAY_GRACE_MS, 1 s), so the relay does not
#: take these events for unpublished; if it did, publish_once makes its publish a no-op.
RECORD_LINGER_MS: Final = 100

#: LISTEN/NOTIFY channel that wakes the relay early when the fast path gave events up.
RELAY_WAKE_CHANNEL = "acme_outbox"


async def publish_batch(
    redis: Redis,
    events: Sequence[OutboxEvent],
    dedupe_ttl_s: int,
    *,
    via: str = "relay",
    shards: int = 1,
) -> list[Published]:
    """Publishes each event at most once; returns each one's stream entry and whether this
    publish added it.

    Each event gets a producer span in its own order's trace (a batch mixes orders)."""
    if not events:
        return []
    targets = [
        event.shard if event.shard is not None else shard_of(str(event.order_id), shards)
        for event in events
    ]
    spans = [
        tracer().start_span(
            f"send {shard(index).events}",
            context=context_from_traceparent(event.traceparent),
            kind=SpanKind.PRODUCER,
            attributes={
                **_PUBLISH_ATTRIBUTES,
                "messaging.destination.name": shard(index).events,
                "acme.publish.path": via,
                "acme.event_id": str(event.event_id),
            },
        )
        for event, index in zip(events, targets, strict=True)
    ]
    traceparents = [_traceparent_of(span) for span in spans]
    try:
        results = await _publish(redis, events, targets, dedupe_ttl_s, traceparents)
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, repr(exc)))
            span.end()
        raise
    for span, result in zip(spans, results, strict=True):
        span.set_attribute("messaging.message.id", result.stream_id)
        span.set_attribute("acme.publish.added", result.added)
        span.end()
    return results


def _traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


async def _publish(
    redis: Redis,
    events: Sequence[OutboxEvent],
    targets: Sequence[int],
    dedupe_ttl_s: int,
    traceparents: Sequence[str | None],
) -> list[Published]:
    ttl_ms = dedupe_ttl_s * 1000
    calls = []
    for event, index, traceparent in zip(events, targets, traceparents, strict=True):
        event_id = str(event.event_id)
        fields = stream_fields(event_id, str(event.order_id), event.envelope, traceparent)
        on = shard(index)
        calls.append(([on.events, on.published_key(event_id)], [ttl_ms, *fields]))
    replies = await load_script("publish_once").run_many(redis, calls)
    return [
        Published(event.event_id, event.order_id, as_text(stream_id), bool(added), index)
        for event, index, (added, stream_id) in zip(events, targets, replies, strict=True)
    ]


class FastPathPublisher:
    """Publishes freshly committed events right after the response, in batches."""

    name = "fast-path-publisher"

    def __init__(
        self,
        store: OrderStore,
        redis: Redis,
        *,
        queue_size: int,
        pause_ms: int,
        dedupe_ttl_s: int,
        metrics: OrdersMetrics,
        shards: int = 1,
        batch_max: int = 256,
        record_linger_ms: int = RECORD_LINGER_MS,
    ) -> None:
        self._store = store
        self._published = metrics.events_published.labels("fast_path")
        self._left_to_relay = metrics.events_left_to_relay
        self._redis = redis
        self._queue: asyncio.Queue[OutboxEvent] = asyncio.Queue(maxsize=queue_size)
        self._pause_s = pause_ms / 1000
        self._dedupe_ttl_s = dedupe_ttl_s
        self._shards = shards
        self._batch_max = batch_max
        self._paused_until = 0.0
        self._record_linger_s = record_linger_ms / 1000
        self._unrecorded: list[Published] = []
        self._record_due = 0.0
        self._recording: asyncio.Task[None] | None = None

    def submit(self, event: OutboxEvent) -> None:
        """Never blocks the request: a full queue or a paused publisher leaves it to the relay."""
        if asyncio.get_running_loop().time() < self._paused_until:
            self._left_to_relay.inc()
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._left_to_relay.inc()

    async def _next_batch(self, stop: asyncio.Event, timeout_s: float | None) -> list[OutboxEvent]:
        """What waits in the queue, once something does (or `timeout_s` passed, or stop)."""
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                [getter, stopper], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        if not getter.done() or getter.cancelled():
            return []
        batch = [getter.result()]
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def publish_now(self, batch: list[OutboxEvent]) -> None:
        """Publishes `batch`; its results are recorded with the next `record_published`."""
        try:
            results = await publish_batch(
                self._redis, batch, self._dedupe_ttl_s, via="fast-path", shards=self._shards
            )
        except (RedisError, OSError) as exc:
            self._paused_until = asyncio.get_running_loop().time() + self._pause_s
            self._left_to_relay.inc(len(batch))
            log.warning("fast_path_publish_failed", events=len(batch), error=repr(exc))
            await self._wake_relay()
            return
        self._published.inc(sum(1 for result in results if result.added))
        if not self._unrecorded:
            self._record_due = asyncio.get_running_loop().time() + self._record_linger_s
        self._unrecorded.extend(results)

    async def record_published(self) -> None:
        """Records the publishes gathered since the last call, in one statement."""
        results, self._unrecorded = self._unrecorded, []
        try:
            await self._store.mark_published(self._store.pool, results, via="fast-path")
        except (asyncpg.PostgresError, OSError) as exc:
            # Published but not recorded: the relay finds the row still unpublished and
            # publish_once turns its second publish into a no-op: nothing lost or duplicated.
            log.warning("fast_path_mark_failed", events=len(results), error=repr(exc))

    def _record_in_s(self) -> float | None:
        """Seconds until the gathered publishes are due to be recorded (None: none gathered);
        while a record is still running the next one gathers, and is looked at again later."""
        if not self._unrecorded:
            return None
        if self._recording is not None:
            return self._record_linger_s  # look again then
        return max(0.0, self._record_due - asyncio.get_running_loop().time())

    def _start_recording(self) -> None:
        """Records in a task of its own: publishing never waits for PostgreSQL."""
        self._recording = asyncio.create_task(self.record_published(), name="fast-path-record")
        self._recording.add_done_callback(self._recorded)

    def _recorded(self, _task: asyncio.Task[None]) -> None:
        self._recording = None
        if self._unrecorded:  # gathered meanwhile: due now (the publisher wakes on its timer)
            self._record_due = asyncio.get_running_loop().time()

    async def _wake_relay(self) -> None:
        # A hint only: the relay polls anyway, this just saves it the wait.
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await self._store.pool.execute("SELECT pg_notify($1, '')", RELAY_WAKE_CHANNEL)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self._next_batch(stop, self._record_in_s())
            if batch:
                await self.publish_now(batch)
            due_in_s = self._record_in_s()
            if (
                due_in_s is not None
                and self._recording is None
                and (due_in_s == 0 or len(self._unrecorded) >= self._batch_max)
            ):
                self._start_recording()
        # Drain what was already handed over, best effort; the relay has the rest anyway.
        with contextlib.suppress(asyncio.QueueEmpty):
            leftover = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            if leftover:
                await self.publish_now(leftover)
        if self._recording is not None:
            await self._recording
        if self._unrecorded:
            await self.record_published()
