"""One order's whole path, assembled from both services' records, oldest first.

PostgreSQL: the order (status, trace id), its timeline (created, published, re-driven, and the
receipts: each failed attempt with consumer and error, each hold over the recipient's hourly
cap with its reason, sent, dead), the outbox row while it
lives, the send ledger (the SMTP server's acceptance). Redis: what became of each stream entry
(pending where, delivered how often), dead letters and the operators' replays and purges. The
Redis scans start at the order's creation and stop after `max_scan` entries each.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from acme_cli.admin.actions import find_audit
from acme_cli.admin.deadletters import decode_dead_entry
from acme_cli.admin.deadstream import fetch_dead, scan_index
from acme_cli.admin.records import ledger_rows, order_record
from acme_notify.keys import EVENTS_STREAM, HELD_SET, NOTIFIER_GROUP
from acme_runtime.logs import mask_email

__all__ = ["OrderTrace", "StreamEntryState", "TraceStep", "trace_order"]

#: Timeline kinds that are the notifier's receipts, as opposed to the order service's own.
_RECEIPT_KINDS = frozenset({"attempt_failed", "held", "sent", "dead"})
_ACTION_STEP = {"replay": "replayed", "purge": "purged"}
#: Causal order of steps, for ties: the sources stamp time with different precision (the
#: notifier's receipts in whole milliseconds, PostgreSQL in microseconds).
_RANK = {
    kind: rank
    for rank, kinds in enumerate(
        (
            ("created",),
            ("published", "redriven"),
            ("attempt_failed", "held"),
            ("in_dead_stream", "dead"),
            ("replayed", "purged"),
            ("email_accepted",),
            ("sent",),
        )
    )
    for kind in kinds
}


def _order(step: TraceStep) -> tuple[datetime, int]:
    return step.at.replace(microsecond=step.at.microsecond // 1000 * 1000), _RANK.get(step.kind, 9)


class TraceStep(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    kind: str
    #: Where it was recorded: orders, receipt, ledger, dead, audit.
    source: str
    detail: dict[str, Any]


class StreamEntryState(msgspec.Struct, frozen=True, kw_only=True):
    stream_id: str
    #: pending (delivered, not acknowledged), waiting (not read yet), acknowledged, or gone
    #: (trimmed after acknowledgement, or moved to the dead stream).
    state: str
    consumer: str | None = None
    deliveries: int | None = None
    idle_ms: int | None = None
    #: A pending entry held over its recipient's hourly cap: when it may be tried again.
    held_until: datetime | None = None


class OrderTrace(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    trace_id: str | None
    status: str
    attempts: int
    email: str
    created_at: datetime
    event_ids: list[str]
    steps: list[TraceStep]
    stream_entries: list[StreamEntryState]
    #: The outbox row while the order waits for a sent/dead receipt; None once confirmed.
    outbox: dict[str, Any] | None
    notes: list[str]


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _add(ids: list[str], value: Any) -> None:
    if value and str(value) not in ids:
        ids.append(str(value))


class _Gathered:
    """Steps and ids collected so far; each source below adds to it."""

    def __init__(self) -> None:
        self.steps: list[TraceStep] = []
        self.event_ids: list[str] = []
        self.stream_ids: list[str] = []
        self.notes: list[str] = []

    def step(self, at: datetime, kind: str, source: str, **detail: Any) -> None:
        self.steps.append(TraceStep(at=at, kind=kind, source=source, detail=detail))


def _from_timeline(g: _Gathered, record: dict[str, Any]) -> None:
    for row in record["timeline"]:
        detail = row["detail"] if isinstance(row["detail"], dict) else {}
        source = "receipt" if row["kind"] in _RECEIPT_KINDS else "orders"
        g.step(row["at"], row["kind"], source, **detail)
        _add(g.event_ids, detail.get("event_id"))
        _add(g.stream_ids, detail.get("stream_id"))
    if record["outbox"] is not None:
        _add(g.event_ids, record["outbox"]["event_id"])


async def _from_ledger(g: _Gathered, pool: asyncpg.Pool) -> None:
    for row in await ledger_rows(pool, g.event_ids):
        g.step(
            row.sent_at,
            "email_accepted",
            "ledger",
            message_id=row.message_id,
            provider=row.provider,
            consumer=row.consumer,
            deliveries=row.deliveries,
            smtp_reply=row.smtp_reply,
        )


async def _from_dead(g: _Gathered, redis: Redis, order_id: str, since_ms: int, cap: int) -> None:
    scanned, matching = 0, []
    async for item in scan_index(redis, lower=f"{since_ms}-0", max_entries=cap):
        scanned += 1
        if item.order_id == order_id:
            matching.append(item.dead_id)
    for dead_id, fields in (await fetch_dead(redis, matching)).items():
        entry = decode_dead_entry(dead_id, fields)
        g.step(
            entry.dead_at,
            "in_dead_stream",
            "dead",
            dead_id=dead_id,
            reason_class=entry.reason_class,
            reason=entry.reason,
            deliveries=entry.deliveries,
            consumer=entry.consumer,
        )
    if scanned >= cap:
        g.notes.append(f"dead stream: scan stopped after {cap} entries; some may be missing")


async def _from_audit(g: _Gathered, redis: Redis, order_id: str, since_ms: int, cap: int) -> None:
    records, truncated = await find_audit(
        redis, since_ms=since_ms, order_ids={order_id}, max_scan=cap
    )
    if truncated:
        g.notes.append(f"audit stream: scan stopped after {cap} entries; some may be missing")
    for record in records:
        detail: dict[str, Any] = {"who": record.who, "why": record.why, "dead_id": record.dead_id}
        if record.new_id:
            detail["new_stream_id"] = record.new_id
            _add(g.stream_ids, record.new_id)
        g.step(record.at, _ACTION_STEP.get(record.action, record.action), "audit", **detail)


async def _last_delivered(redis: Redis) -> str | None:
    if not await redis.exists(EVENTS_STREAM):
        return None
    groups: Any = await redis.xinfo_groups(EVENTS_STREAM)
    for group in groups:
        if group["name"].decode() == NOTIFIER_GROUP:
            return str(group["last-delivered-id"].decode())
    return None


async def _entry_state(
    redis: Redis, stream_id: str, last_delivered: str | None
) -> StreamEntryState:
    pending: Any = await redis.xpending_range(
        EVENTS_STREAM, NOTIFIER_GROUP, min=stream_id, max=stream_id, count=1
    )
    if pending:
        release_ms = await redis.zscore(HELD_SET, stream_id)
        return StreamEntryState(
            stream_id=stream_id,
            state="pending",
            consumer=pending[0]["consumer"].decode(),
            deliveries=int(pending[0]["times_delivered"]),
            idle_ms=int(pending[0]["time_since_delivered"]),
            held_until=None
            if release_ms is None
            else datetime.fromtimestamp(release_ms / 1000, tz=UTC),
        )
    if not await redis.xrange(EVENTS_STREAM, stream_id, stream_id):
        return StreamEntryState(stream_id=stream_id, state="gone")
    read = last_delivered is not None and _id_key(stream_id) <= _id_key(last_delivered)
    return StreamEntryState(stream_id=stream_id, state="acknowledged" if read else "waiting")


async def trace_order(
    pool: asyncpg.Pool,
    redis: Redis,
    order_id: uuid.UUID,
    *,
    show_pii: bool,
    max_scan: int = 50_000,
) -> OrderTrace | None:
    """The order's path, or None when there is no such order."""
    record = await order_record(pool, order_id)
    if record is None:
        return None
    order, oid = record["order"], str(order_id)
    since_ms = int(order["created_at"].timestamp() * 1000)
    g = _Gathered()
    _from_timeline(g, record)
    await _from_ledger(g, pool)
    await _from_dead(g, redis, oid, since_ms, max_scan)
    await _from_audit(g, redis, oid, since_ms, max_scan)
    last_delivered = await _last_delivered(redis)
    outbox = record["outbox"]
    email = order["customer_email"]
    return OrderTrace(
        order_id=oid,
        trace_id=order["trace_id"],
        status=order["notification_status"],
        attempts=order["delivery_attempts"],
        email=email if show_pii else mask_email(email),
        created_at=order["created_at"],
        event_ids=g.event_ids,
        steps=sorted(g.steps, key=_order),
        stream_entries=[await _entry_state(redis, sid, last_delivered) for sid in g.stream_ids],
        outbox=None if outbox is None else {k: _plain(v) for k, v in outbox.items()},
        notes=g.notes,
    )


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value
