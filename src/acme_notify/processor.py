"""Handling one stream entry, from decode to acknowledgement: the notifier's core use case.

Both the consumer (new entries) and the claimer (due retries) hand entries here. The processor
bounds in-flight sends (`concurrency`), remembers which entries are in flight (the heartbeat
keeps them from being claimed while they are being sent), and turns every outcome into exactly
one stream operation:

* accepted by SMTP  -> ledger row, then XACK + `sent` receipt (ack_sent.lua)
* already in ledger -> XACK + `sent` receipt, no e-mail (a redelivery or a re-drive)
* TransientError    -> stays pending; last error kept; `attempt_failed` receipt; the claimer
                       retries it after its backoff
* PermanentError    -> dead-letter now with the reason (dead_letter.lua) + `dead` receipt
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from acme_notify.envelope import StreamEntry, decode_entry
from acme_notify.errors import PermanentError, PoisonMessage, TransientError
from acme_notify.ledger import SendLedger
from acme_notify.render import RenderedMessage, Renderer
from acme_notify.streams import RawEntry, Streams, now_ms
from acme_runtime.logs import mask_email

__all__ = ["Processor", "Sender"]

log = structlog.get_logger(__name__)

#: Sends pre-built message bytes; returns the server's reply or raises Transient/PermanentError.
Sender = Callable[[str, list[str], bytes], Awaitable[str]]


class Processor:
    def __init__(
        self,
        *,
        streams: Streams,
        ledger: SendLedger,
        renderer: Renderer,
        send: Sender,
        concurrency: int,
        max_deliveries: int,
    ) -> None:
        self._streams = streams
        self._ledger = ledger
        self._renderer = renderer
        self._send = send
        self._max_deliveries = max_deliveries
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.on_outcome: Callable[[str, str], None] = lambda outcome, reason_class: None

    @property
    def free_slots(self) -> int:
        return self.concurrency - len(self.in_flight)

    def submit(self, entry: RawEntry) -> None:
        """Starts handling an entry in its own task (callers respect `free_slots`)."""
        entry_id = entry[0]
        if entry_id in self.in_flight:
            return
        task = asyncio.create_task(self._guarded(entry), name=f"entry-{entry_id}")
        self.in_flight[entry_id] = task
        task.add_done_callback(lambda _t: self.in_flight.pop(entry_id, None))

    async def drain(self) -> None:
        """Waits for every in-flight entry (the first phase of a graceful shutdown)."""
        while self.in_flight:
            await asyncio.gather(*self.in_flight.values(), return_exceptions=True)

    async def _guarded(self, raw: RawEntry) -> None:
        async with self._slots:
            try:
                await self.handle(raw)
            except Exception as exc:  # noqa: BLE001 - one bad entry must not kill the loop
                # Redis or Postgres failed mid-way: the entry stays pending and is retried.
                log.warning("entry_handling_failed", entry_id=raw[0], error=repr(exc))
                self.on_outcome("error", type(exc).__name__)

    async def handle(self, raw: RawEntry) -> None:
        entry_id, fields, deliveries = raw
        try:
            entry = decode_entry(entry_id, fields, deliveries)
        except PoisonMessage as exc:
            log.error("poison_entry_dead_lettered", entry_id=entry_id, reason=exc.reason)
            await self._streams.dead_letter(entry_id, reason_class="poison", reason=exc.reason)
            self.on_outcome("dead", "poison")
            return
        envelope = entry.envelope
        bound = log.bind(
            entry_id=entry_id,
            event_id=envelope.event_id,
            order_id=envelope.order_id,
            deliveries=deliveries,
        )
        already = await self._ledger.already_sent(envelope.event_id)
        if already is not None:
            await self._streams.ack_sent(
                entry_id, self._receipt(entry, "sent", already, reason_class="duplicate")
            )
            bound.info("duplicate_suppressed", message_id=already)
            self.on_outcome("duplicate", "")
            return
        try:
            message = self._renderer.render(envelope)
            reply = await self._send(message.sender, [message.recipient], message.data)
        except TransientError as exc:
            bound.warning("send_failed_transient", reason=exc.reason, server_down=exc.server_down)
            await self._streams.record_failure(
                entry_id,
                self._receipt(entry, "attempt_failed", exc.reason, reason_class="smtp_transient"),
                refund=exc.server_down,
            )
            self.on_outcome("transient", "smtp_transient")
            return
        except PermanentError as exc:
            bound.warning(
                "send_failed_permanent",
                reason=exc.reason,
                to=mask_email(envelope.payload.customer.email),
            )
            await self._streams.dead_letter(
                entry_id, reason_class=exc.reason_class, reason=exc.reason
            )
            self.on_outcome("dead", exc.reason_class)
            return
        await self._sent(entry, message, reply)
        bound.info("email_sent", message_id=message.message_id)
        self.on_outcome("sent", "")

    async def _sent(self, entry: StreamEntry, message: RenderedMessage, reply: str) -> None:
        envelope = entry.envelope
        await self._ledger.record_sent(
            event_id=envelope.event_id,
            order_id=envelope.order_id,
            message_id=message.message_id,
            smtp_reply=reply,
            consumer=self._streams.consumer,
            deliveries=entry.deliveries,
        )
        await self._streams.ack_sent(
            entry.entry_id, self._receipt(entry, "sent", message.message_id)
        )

    def _receipt(
        self, entry: StreamEntry, kind: str, detail: str, reason_class: str = ""
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
        }
