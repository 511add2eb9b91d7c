"""Handling one stream entry, from decode to acknowledgement: the notifier's core use case.

Both the consumer (new entries) and the claimer (due retries) hand entries here. The processor
bounds in-flight sends (`concurrency`), remembers which entries are in flight (the heartbeat
keeps them from being claimed while they are being sent), and turns every outcome into exactly
one stream operation:

* accepted by SMTP  -> ledger row, then XACK + `sent` receipt (ack_sent.lua)
* already in ledger -> XACK + `sent` receipt, no e-mail (a redelivery or a re-drive)
* TransientError    -> stays pending; last error kept; `attempt_failed` receipt; the claimer
                       retries it after its backoff (a `ProviderError` or a server that is
                       down gives the try back: the relay's problem is not this e-mail's)
* PermanentError    -> dead-letter now with the reason (dead_letter.lua) + `dead` receipt
* over its recipient's cap (ACME_RECIPIENT_MAX_PER_HOUR, recipient_quota.lua)
                    -> held (hold.lua): stays pending, unclaimed until the window has room,
                       its try given back (never reaped), and a `held` receipt with the reason

Our own storage failing is handled by what it can cost. Before the e-mail is sent, an outage of
PostgreSQL or Redis leaves the entry pending and gives its try back; a refusal (a defect, not
an outage) uses the try up, so the reaper ends it instead of it looping for ever. After SMTP
accepted the e-mail nothing is given back, ever: the ledger row is retried through an outage
for `record_patience_s`, then the entry is acknowledged anyway, and a failure to record or to
acknowledge is counted (`acme_notify_bookkeeping_failures_total`) and logged as an error. An
e-mail that went out can therefore be sent again only within the delivery budget, never in a
loop. The ledger also remembers, in this process, the e-mails it could not record, so this
replica never sends those again itself. Dead letters a refusal storm cost before it was
recognised are taken back by `acme_notify.rescind`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from acme_notify.envelope import StreamEntry, decode_entry
from acme_notify.errors import (
    CircuitOpen,
    PermanentError,
    PoisonMessage,
    ProviderError,
    TransientError,
)
from acme_notify.ledger import SendLedger
from acme_notify.providers import Accepted
from acme_notify.render import RenderedMessage, Renderer
from acme_notify.rescind import Rescinder
from acme_notify.streams import RawEntry, Streams
from acme_notify.telemetry import NotifyMetrics
from acme_runtime.clock import now_ms
from acme_runtime.failures import is_outage, retry_outages
from acme_runtime.logs import mask_email
from acme_runtime.tracing import context_from_traceparent, current_traceparent, tracer

__all__ = ["Processor", "Sender"]

log = structlog.get_logger(__name__)

_SMTP_ATTRIBUTES: Final = {"network.protocol.name": "smtp"}

#: Sends pre-built message bytes; returns the server's reply and the provider that accepted it,
#: or raises TransientError / PermanentError.
Sender = Callable[[str, list[str], bytes], Awaitable[Accepted]]


class Processor:
    def __init__(
        self,
        *,
        streams: Streams | Sequence[Streams],
        ledger: SendLedger,
        renderer: Renderer,
        send: Sender,
        concurrency: int,
        max_deliveries: int,
        record_patience_s: float = 30.0,
        recipient_cap: int = 0,
        recipient_window_s: float = 3600.0,
        metrics: NotifyMetrics | None = None,
    ) -> None:
        # One Streams per shard, by shard index; the first also reaches the global keys.
        self._shards = (streams,) if isinstance(streams, Streams) else tuple(streams)
        self._streams = self._shards[0]
        self._recipient_cap = recipient_cap
        self._recipient_window_ms = round(recipient_window_s * 1000)
        self._window_text = "hour" if recipient_window_s == 3600 else f"{recipient_window_s:g} s"
        self._ledger = ledger
        self._renderer = renderer
        self._send = send
        self._max_deliveries = max_deliveries
        self._record_patience_s = record_patience_s
        self._metrics = metrics or NotifyMetrics()
        self._rescinder = Rescinder(self._shards, self._metrics.rescinded)
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        #: (shard index, entry id) -> its task: entry ids are unique per stream only.
        self.in_flight: dict[tuple[int, str], asyncio.Task[None]] = {}
        #: Set when an entry finishes and a quarter of the slots (at least one) are free: a
        #: reader waiting for room wakes on it and reads several entries at once, so a backlog
        #: is read in batches whose database and Redis work is shared, not one entry a read.
        self.slot_freed = asyncio.Event()
        self._refill_at = max(1, concurrency // 4)
        #: Event id -> (its lock, how many copies hold or wait for it): two copies of one event
        #: in this replica (a re-drive, a replay, a delivery a failed-over Redis forgot) are
        #: handled one after the other, so the second finds the first's ledger row.
        self._same_event: dict[str, tuple[asyncio.Lock, int]] = {}

    @property
    def free_slots(self) -> int:
        return self.concurrency - len(self.in_flight)

    def submit(self, entry: RawEntry) -> None:
        """Starts handling an entry in its own task (callers respect `free_slots`)."""
        key = (entry.shard, entry.entry_id)
        if key in self.in_flight:
            return
        task = asyncio.create_task(self._guarded(entry), name=f"entry-{key[0]}-{key[1]}")
        self.in_flight[key] = task
        self._metrics.in_flight.set(len(self.in_flight))
        task.add_done_callback(lambda _t: self._done(key))

    def in_flight_by_shard(self) -> dict[int, list[str]]:
        """The entry ids being handled now, by shard index."""
        by_shard: dict[int, list[str]] = {}
        for shard_index, entry_id in list(self.in_flight):
            by_shard.setdefault(shard_index, []).append(entry_id)
        return by_shard

    def _on(self, entry: RawEntry | StreamEntry) -> Streams:
        """The stream state of the entry's shard."""
        return self._shards[entry.shard]

    def _done(self, key: tuple[int, str]) -> None:
        self.in_flight.pop(key, None)
        self._metrics.in_flight.set(len(self.in_flight))
        if self.free_slots >= self._refill_at:
            self.slot_freed.set()

    async def drain(self) -> None:
        """Waits for every in-flight entry (the first phase of a graceful shutdown)."""
        while self.in_flight:
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)

    async def _guarded(self, raw: RawEntry) -> None:
        async with self._slots:
            try:
                await self.handle(raw)
            except Exception as exc:
                if is_outage(exc):
                    # Redis or PostgreSQL is unavailable before anything was sent: the entry
                    # stays pending and its try is given back, so an outage of ours never
                    # dead-letters an e-mail.
                    log.warning("entry_handling_failed", entry_id=raw.entry_id, error=repr(exc))
                    self._metrics.send_failures.labels("outage").inc()
                    with contextlib.suppress(Exception):
                        await self._on(raw).refund(raw.entry_id)
                    return
                # A defect, or a refusal of our storage, met with this entry: it stays pending
                # and uses up its deliveries, so the reaper dead-letters it in the end instead
                # of it looping for ever.
                log.exception("entry_handling_crashed", entry_id=raw.entry_id, error=repr(exc))
                self._metrics.send_failures.labels("error").inc()

    async def handle(self, raw: RawEntry) -> None:
        """Handles one entry inside a consumer span that continues the order's trace."""
        entry_id, fields, deliveries, shard_index = raw
        streams = self._shards[shard_index]
        self._metrics.delivery_attempts.inc()
        try:
            entry = decode_entry(entry_id, fields, deliveries, shard_index)
        except PoisonMessage as exc:
            with tracer().start_as_current_span(
                f"process {streams.shard.events}",
                kind=SpanKind.CONSUMER,
                attributes=self._span_attributes(streams, entry_id, deliveries),
            ) as span:
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                log.error("poison_entry_dead_lettered", entry_id=entry_id, reason=exc.reason)
                await streams.dead_letter(entry_id, reason_class="poison", reason=exc.reason)
            self._metrics.dead_lettered.labels("poison").inc()
            self._metrics.send_failures.labels("poison").inc()
            return
        envelope = entry.envelope
        # The publish's producer span when the entry names it, else the order's request span.
        producer = fields.get(b"traceparent")
        trace_context = envelope.trace
        if producer:
            parent = context_from_traceparent(producer.decode("ascii", "replace"))
        else:
            parent = context_from_traceparent(
                trace_context.traceparent if trace_context else None,
                trace_context.tracestate if trace_context else "",
            )
        attributes = {
            **self._span_attributes(streams, entry_id, deliveries),
            "acme.order_id": envelope.order_id,
            "acme.event_id": envelope.event_id,
        }
        with (
            tracer().start_as_current_span(
                f"process {streams.shard.events}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            ),
            structlog.contextvars.bound_contextvars(
                entry_id=entry_id,
                event_id=envelope.event_id,
                order_id=envelope.order_id,
                deliveries=deliveries,
            ),
        ):
            async with self._one_copy_at_a_time(envelope.event_id):
                await self._deliver(entry)

    @contextlib.asynccontextmanager
    async def _one_copy_at_a_time(self, event_id: str) -> AsyncIterator[None]:
        lock, users = self._same_event.get(event_id, (None, 0))
        lock = lock or asyncio.Lock()
        self._same_event[event_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _lock, users = self._same_event[event_id]
            if users == 1:
                del self._same_event[event_id]
            else:
                self._same_event[event_id] = (lock, users - 1)

    async def _deliver(self, entry: StreamEntry) -> None:
        envelope = entry.envelope
        already = await self._ledger.already_sent(envelope.event_id)
        if already is not None:
            await self._on(entry).ack_sent(
                entry.entry_id,
                self._receipt(entry, "sent", already, reason_class="duplicate"),
                emailed=False,
            )
            log.info("duplicate_suppressed", message_id=already)
            self._metrics.duplicates_suppressed.inc()
            return
        # An event counts against its recipient's cap once: on its first delivery (or its
        # release after a hold, which gives the delivery back), not on a retry.
        if self._recipient_cap and entry.deliveries == 1 and await self._held(entry):
            return
        try:
            message = self._renderer.render(envelope)
            accepted = await self._smtp_send(message)
        except CircuitOpen:
            # Our own breaker held it back (another entry is the probe): not an attempt.
            await self._on(entry).refund(entry.entry_id)
            return
        except TransientError as exc:
            log.warning(
                "send_failed_transient",
                reason=exc.reason,
                reason_class=exc.reason_class,
                server_down=exc.server_down,
                provider=exc.provider,
            )
            receipt = self._receipt(
                entry, "attempt_failed", exc.reason, exc.reason_class, exc.provider
            )
            await self._on(entry).record_failure(entry.entry_id, receipt, refund=exc.refund)
            self._metrics.send_failures.labels(exc.reason_class).inc()
            if isinstance(exc, ProviderError) and exc.storm_key is not None:
                await self._rescinder.rescind(exc.storm_key, exc.reason)
            return
        except PermanentError as exc:
            log.warning(
                "send_failed_permanent",
                reason=exc.reason,
                provider=exc.provider,
                to=mask_email(envelope.payload.customer.email),
            )
            dead_id = await self._on(entry).dead_letter(
                entry.entry_id, reason_class=exc.reason_class, reason=exc.reason
            )
            if dead_id is not None:
                self._rescinder.remember(exc.reason, entry.shard, dead_id)
            self._metrics.send_failures.labels(exc.reason_class).inc()
            self._metrics.dead_lettered.labels(exc.reason_class).inc()
            return
        await self._sent(entry, message, accepted)
        log.info("email_sent", message_id=message.message_id, provider=accepted.provider)

    async def _held(self, entry: StreamEntry) -> bool:
        """Holds the entry when its recipient already had the cap's worth of e-mails in the
        window: a protection of the recipient (an e-mail bombing through our orders), so the
        e-mail waits, pending, and is never dropped nor charged a try."""
        envelope = entry.envelope
        quota = await self._streams.recipient_quota(
            envelope.payload.customer.email,
            cap=self._recipient_cap,
            window_ms=self._recipient_window_ms,
        )
        if quota.allowed:
            return False
        reason = f"recipient rate limit: {quota.counted} in the last {self._window_text}"
        receipt = self._receipt(entry, "held", reason, reason_class="recipient_rate_limit")
        await self._on(entry).hold(entry.entry_id, quota.release_at_ms, receipt)
        log.info(
            "email_held",
            reason=reason,
            release_at_ms=quota.release_at_ms,
            to=mask_email(envelope.payload.customer.email),
        )
        self._metrics.held.inc()
        return True

    async def _smtp_send(self, message: RenderedMessage) -> Accepted:
        started = time.perf_counter()
        with tracer().start_as_current_span(
            "smtp send", kind=SpanKind.CLIENT, attributes=_SMTP_ATTRIBUTES
        ) as span:
            try:
                return await self._send(message.sender, [message.recipient], message.data)
            except (TransientError, PermanentError) as exc:
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                raise
            finally:
                self._metrics.send_duration.observe(time.perf_counter() - started)

    async def _sent(self, entry: StreamEntry, message: RenderedMessage, accepted: Accepted) -> None:
        """The bookkeeping of an accepted e-mail; never raises, never gives the try back."""
        envelope = entry.envelope
        await self._record(entry, message, accepted)
        receipt = self._receipt(entry, "sent", message.message_id, provider=accepted.provider)
        try:
            await self._on(entry).ack_sent(entry.entry_id, receipt, emailed=True)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the e-mail went out
            # The entry stays pending with this try counted; a redelivery finds the ledger row
            # (or this replica's memory) and acknowledges it without a second e-mail.
            log.error("sent_not_acknowledged", message_id=message.message_id, error=repr(exc))
            self._metrics.bookkeeping_failures.labels("ack").inc()
        self._metrics.emails_sent.inc()
        latency_s = (datetime.now(UTC) - envelope.payload.created_at).total_seconds()
        self._metrics.e2e_latency.observe(max(0.0, latency_s))

    async def _record(
        self, entry: StreamEntry, message: RenderedMessage, accepted: Accepted
    ) -> None:
        """The ledger row, at once (the only duplicate window is a crash before it commits),
        waiting out a short outage; what cannot be recorded is remembered here and reported."""
        envelope = entry.envelope
        try:
            await retry_outages(
                lambda: self._ledger.record_sent(
                    event_id=envelope.event_id,
                    order_id=envelope.order_id,
                    message_id=message.message_id,
                    smtp_reply=accepted.reply,
                    consumer=self._streams.consumer,
                    deliveries=entry.deliveries,
                    provider=accepted.provider,
                ),
                patience_s=self._record_patience_s,
            )
        except Exception as exc:  # noqa: BLE001 - an outage outlasting the patience, or a refusal
            log.error("sent_not_recorded", message_id=message.message_id, error=repr(exc))
            self._metrics.bookkeeping_failures.labels("ledger").inc()
            self._ledger.remember_unrecorded(envelope.event_id, message.message_id)

    def _span_attributes(
        self, streams: Streams, entry_id: str, deliveries: int
    ) -> dict[str, str | int]:
        return {
            "messaging.system": "redis",
            "messaging.destination.name": streams.shard.events,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": self._streams.group,
            "messaging.message.id": entry_id,
            "messaging.client.id": self._streams.consumer,
            "acme.delivery_count": deliveries,
        }

    def _receipt(
        self,
        entry: StreamEntry,
        kind: str,
        detail: str,
        reason_class: str = "",
        provider: str = "",
    ) -> dict[str, str]:
        return {
            "type": kind,
            "event_id": entry.envelope.event_id,
            "order_id": entry.envelope.order_id,
            "at_ms": str(now_ms()),
            "attempts": str(entry.deliveries),
            "consumer": self._streams.consumer,
            "reason_class": reason_class,
            "detail": detail[:1000],
            # Which SMTP provider accepted or refused ("" when none was asked).
            "provider": provider,
            # The receipt continues this trace on the order service's side.
            "traceparent": current_traceparent()[0] or "",
        }
