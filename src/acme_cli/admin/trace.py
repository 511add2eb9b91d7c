"""One order's whole path, assembled from both services' records, oldest first.

PostgreSQL: the order (status, trace id), its timeline (created, published, re-driven, and the
receipts: each failed attempt with consumer and error, each hold over the recipient's hourly
cap with its reason, sent, dead), the outbox row while it
lives, the send ledger (the SMTP server's acceptance). Redis: what became of each stream entry
(pending where, delivered how often), dead letters and the operators' replays and purges. The
Redis scans start at the order's creation and stop after `max_scan` entries each.

The event travels on one shard (acme_runtime.channels): the one its `published` timeline entry
names, or the outbox row's; its stream entries are looked up on that shard's stream, or on
every shard's when neither says (an order published before shards). Dead letters and audit
records are looked for on every shard.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_cli.admin.actions import find_audit
from acme_cli.admin.deadletters import decode_dead_entry
from acme_cli.admin.deadstream import fetch_dead, scan_index
from acme_cli.admin.records import ledger_rows, order_record, outbox_shard
from acme_runtime.channels import NOTIFIER_GROUP, Shard, qualify, shard, unqualify
from acme_runtime.logs import mask_email

__all__ = ["OrderTrace", "StreamEntryState", "TraceStep", "trace_order"]

#: Timeline kinds that are the notifier's receipts, as opposed to the order service's own.
_RECEIPT_KINDS = frozenset({"attempt_failed", "held", "sent", "dead"})
_ACTION_STEP = {"replay": "replayed", "purge": "purged"}
_SHARD_0: Final = (shard(0),)
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
    #: The entry, `qualify`d (`<shard>/<id>`; the bare id on shard 0).
    stream_id: str
    #: The shard whose events stream holds it; None when no shard has it (any more).
    shard: int | None = None
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


#: An events-stream entry: (its shard's index, or None when not known; its stream id).
_StreamRef = tuple[int | None, str]


class _Gathered:
    """Steps and ids collected so far; each source below adds to it."""

    def __init__(self) -> None:
        self.steps: list[TraceStep] = []
        self.event_ids: list[str] = []
        self.stream_refs: list[_StreamRef] = []
        self.notes: list[str] = []

    def step(self, at: datetime, kind: str, source: str, **detail: Any) -> None:
        self.steps.append(TraceStep(at=at, kind=kind, source=source, detail=detail))

    def stream_entry(self, shard_index: int | None, stream_id: Any) -> None:
        if not stream_id:
            return
        ref = (shard_index, str(stream_id))
        if ref not in self.stream_refs:
            self.stream_refs.append(ref)


def _shard_in(detail: dict[str, Any]) -> int | None:
    """The `shard` a published/redriven entry's detail names, if it names a valid one."""
    value = detail.get("shard")
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return shard(value).index
        except ValueError:
            return None
    return None


def _from_timeline(g: _Gathered, record: dict[str, Any]) -> None:
    for row in record["timeline"]:
        detail = row["detail"] if isinstance(row["detail"], dict) else {}
        source = "receipt" if row["kind"] in _RECEIPT_KINDS else "orders"
        g.step(row["at"], row["kind"], source, **detail)
        _add(g.event_ids, detail.get("event_id"))
        g.stream_entry(_shard_in(detail), detail.get("stream_id"))
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


async def _from_dead(
    g: _Gathered, redis: Redis, order_id: str, since_ms: int, cap: int, shards: Sequence[Shard]
) -> None:
    matching, stopped = [], []
    for on in shards:
        scanned = 0
        async for item in scan_index(redis, lower=f"{since_ms}-0", max_entries=cap, on=on):
            scanned += 1
            if item.order_id == order_id:
                matching.append(item.dead_id)
        if scanned >= cap:
            stopped.append(on.label)
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
    if stopped:
        where = "" if len(shards) == 1 else f" of shard {', '.join(stopped)}"
        g.notes.append(f"dead stream{where}: scan stopped after {cap} entries; some may be missing")


async def _from_audit(
    g: _Gathered, redis: Redis, order_id: str, since_ms: int, cap: int, shards: Sequence[Shard]
) -> None:
    records, truncated = await find_audit(
        redis, since_ms=since_ms, order_ids={order_id}, max_scan=cap, shards=shards
    )
    if truncated:
        g.notes.append(f"audit stream: scan stopped after {cap} entries; some may be missing")
    for record in records:
        detail: dict[str, Any] = {"who": record.who, "why": record.why, "dead_id": record.dead_id}
        if record.new_id:
            detail["new_stream_id"] = record.new_id
            g.stream_entry(*unqualify(record.new_id))
        g.step(record.at, _ACTION_STEP.get(record.action, record.action), "audit", **detail)


async def _last_delivered(redis: Redis, on: Shard) -> str | None:
    if not await redis.exists(on.events):
        return None
    groups: Any = await redis.xinfo_groups(on.events)
    for group in groups:
        if group["name"].decode() == NOTIFIER_GROUP:
            return str(group["last-delivered-id"].decode())
    return None


async def _pending(redis: Redis, on: Shard, stream_id: str) -> Any:
    """The entry's pending-list record in the notifier group, or None (or no such group)."""
    if not await redis.exists(on.events):
        return None
    try:
        pending: Any = await redis.xpending_range(
            on.events, NOTIFIER_GROUP, min=stream_id, max=stream_id, count=1
        )
    except ResponseError as exc:  # NOGROUP: no notifier has read this shard yet
        if "NOGROUP" not in str(exc):
            raise
        return None
    return pending[0] if pending else None


async def _entry_state(
    redis: Redis, on: Shard, stream_id: str, last_delivered: str | None
) -> StreamEntryState:
    name = qualify(on.index, stream_id)
    pending = await _pending(redis, on, stream_id)
    if pending is not None:
        release_ms = await redis.zscore(on.held, stream_id)
        return StreamEntryState(
            stream_id=name,
            shard=on.index,
            state="pending",
            consumer=pending["consumer"].decode(),
            deliveries=int(pending["times_delivered"]),
            idle_ms=int(pending["time_since_delivered"]),
            held_until=None
            if release_ms is None
            else datetime.fromtimestamp(release_ms / 1000, tz=UTC),
        )
    if not await redis.xrange(on.events, stream_id, stream_id):
        return StreamEntryState(stream_id=name, shard=on.index, state="gone")
    read = last_delivered is not None and _id_key(stream_id) <= _id_key(last_delivered)
    state = "acknowledged" if read else "waiting"
    return StreamEntryState(stream_id=name, shard=on.index, state=state)


class _StreamStates:
    """The state of the order's stream entries, each read from its shard."""

    def __init__(self, redis: Redis, order_id: str, candidates: Sequence[Shard]) -> None:
        self._redis = redis
        self._order_id = order_id
        #: Where to look for an entry whose shard is not known.
        self._candidates = candidates
        self._last_delivered: dict[int, str | None] = {}

    async def _state_on(self, on: Shard, stream_id: str) -> StreamEntryState:
        if on.index not in self._last_delivered:
            self._last_delivered[on.index] = await _last_delivered(self._redis, on)
        return await _entry_state(self._redis, on, stream_id, self._last_delivered[on.index])

    async def _find(self, stream_id: str) -> Shard | None:
        """The candidate shard whose events stream holds this order's entry of that id (stream
        ids are unique per stream only: another shard may have one of the same id)."""
        for on in self._candidates:
            reply: Any = await self._redis.xrange(on.events, stream_id, stream_id)
            if reply and reply[0][1].get(b"order_id", b"").decode("utf-8", "replace") == (
                self._order_id
            ):
                return on
        return None

    async def state(self, ref: _StreamRef) -> StreamEntryState:
        shard_index, stream_id = ref
        if shard_index is not None:
            return await self._state_on(shard(shard_index), stream_id)
        if len(self._candidates) == 1:
            return await self._state_on(self._candidates[0], stream_id)
        found = await self._find(stream_id)
        if found is None:  # on no shard any more: acknowledged and trimmed, or dead
            return StreamEntryState(stream_id=stream_id, state="gone")
        return await self._state_on(found, stream_id)


async def trace_order(
    pool: asyncpg.Pool,
    redis: Redis,
    order_id: uuid.UUID,
    *,
    show_pii: bool,
    max_scan: int = 50_000,
    shards: Sequence[Shard] = _SHARD_0,
) -> OrderTrace | None:
    """The order's path, or None when there is no such order. `shards`: the shards the
    deployment runs (ACME_STREAM_SHARDS)."""
    record = await order_record(pool, order_id)
    if record is None:
        return None
    order, oid = record["order"], str(order_id)
    since_ms = int(order["created_at"].timestamp() * 1000)
    g = _Gathered()
    _from_timeline(g, record)
    # The event's shard: its published entry's, else its outbox row's (None: not known).
    known = next((i for i, _sid in g.stream_refs if i is not None), None)
    if known is None:
        known = await outbox_shard(pool, order_id)
    everywhere = tuple(shards)
    if known is not None and shard(known) not in everywhere:  # a shard no longer read
        everywhere += (shard(known),)
    await _from_ledger(g, pool)
    await _from_dead(g, redis, oid, since_ms, max_scan, everywhere)
    await _from_audit(g, redis, oid, since_ms, max_scan, everywhere)
    states = _StreamStates(redis, oid, everywhere if known is None else (shard(known),))
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
        stream_entries=[await states.state(ref) for ref in g.stream_refs],
        outbox=None if outbox is None else {k: _plain(v) for k, v in outbox.items()},
        notes=g.notes,
    )


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value
