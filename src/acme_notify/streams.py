"""The notifier's view of Redis: its consumer group and the Lua scripts, behind typed methods.

Every multi-step change of stream state is one Lua script (atomic, race-free between replicas);
this module is the only place that knows their argument order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_notify.keys import NOTIFIER_GROUP, recipient_field, recipient_windows
from acme_runtime.channels import Shard, shard
from acme_runtime.clock import now_ms
from acme_runtime.coalesce import Coalescer
from acme_runtime.consumers import ensure_group
from acme_runtime.lua import load_script
from acme_runtime.text import as_text

__all__ = [
    "Acks",
    "ClaimResult",
    "Quota",
    "RawEntry",
    "ReapRound",
    "Streams",
    "claim_due_across",
    "read_new_across",
]

log = structlog.get_logger(__name__)

#: The audit stream's approximate length bound when the notifier itself adds to it.
RESCIND_AUDIT_MAXLEN = 100_000
#: A rescind is no operator's replay: the replay cap does not hold it back (nor is it "forced").
RESCIND_CAP = 2**31 - 1
_SHARD_0 = shard(0)
_Ack = tuple[str, dict[str, str], bool]  # entry id, receipt, e-mailed just now


async def read_new_across(shards: Sequence[Streams], count: int, block_ms: int) -> list[RawEntry]:
    """New entries of several shards in ONE call (XREADGROUP over their streams, `count` from
    each at most): a single Redis node allows it, a cluster does not (their keys are in
    different slots). What several shards hand over together then starts together, so the
    processor's ledger look-ups and acknowledgements stay batched as with one shard."""
    first = shards[0]
    by_stream = {on.shard.events: on for on in shards}
    try:
        reply: Any = await first.redis.xreadgroup(
            first.group,
            first.consumer,
            {on.shard.events: ">" for on in shards},
            count=count,
            block=block_ms,
        )
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        log.warning("consumer_group_vanished_recreating", group=first.group, shards=len(shards))
        for on in shards:
            await on.ensure_group()
        return []
    entries: list[RawEntry] = []
    for stream, items in reply or []:
        index = by_stream[as_text(stream)].shard.index
        for entry_id, fields in items:
            if fields is not None:  # None: deleted between XADD and read
                entries.append(RawEntry(as_text(entry_id), fields, 1, index))
    return entries


async def claim_due_across(
    shards: Sequence[Streams],
    *,
    base_ms: int,
    cap_ms: int,
    jitter: float,
    max_deliveries: int,
    limit: int,
    scan: int = 200,
) -> list[ClaimResult | ResponseError]:
    """claim_due on several shards in ONE pipeline (`limit` from each at most), one result per
    shard in order: a claimer round over N shards of one Redis node is one round trip. A shard
    whose group does not exist yet has nothing to claim; a shard whose call failed otherwise
    answers its error, and the others' claims stand (they are XCLAIMed already: dropping them
    would leave them idle in our name for a whole backoff)."""
    script = load_script("claim_due")
    calls = [on.claim_call(base_ms, cap_ms, jitter, max_deliveries, limit, scan) for on in shards]
    replies = await script.run_many(shards[0].redis, calls, errors_as_replies=True)
    results: list[ClaimResult | ResponseError] = []
    for on, reply in zip(shards, replies, strict=True):
        if not isinstance(reply, ResponseError):
            results.append(on.claimed(reply))
        else:
            results.append(ClaimResult([], []) if _no_group(reply) else reply)
    return results


def _no_group(exc: ResponseError) -> bool:
    """The stream or its group does not exist (yet: the consumer makes them at start; or any
    more: Redis lost them, and the consumer makes them again)."""
    text = str(exc)
    return "NOGROUP" in text or "no such key" in text


class RawEntry(NamedTuple):
    """One events-stream entry as read, before decoding."""

    entry_id: str
    fields: dict[bytes, bytes]
    #: Deliveries to the group so far, this one included.
    deliveries: int
    #: The index of the shard whose stream holds the entry (entry ids are per stream).
    shard: int = 0


class ReapRound(NamedTuple):
    """What one reaper round found and did on a shard."""

    #: Pending entries over their delivery budget, to be dead-lettered.
    exhausted: list[str]
    #: Entries the trim removed (whole listpack nodes: approximate).
    trimmed: int


@dataclass(frozen=True)
class ClaimResult:
    claimed: list[RawEntry]
    missing: list[str]


class Quota(NamedTuple):
    """A recipient's window as `recipient_quota` found it."""

    allowed: bool
    #: E-mails counted in the window (this one included when allowed).
    counted: int
    #: When a held e-mail may be tried again (ms since the epoch; 0 when allowed).
    release_at_ms: int


class Acks:
    """Acknowledgements of sends that finish together go to Redis in one pipeline (one per
    node of a cluster), whatever their shards: a replica makes one and shares it."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._coalescer: Coalescer[tuple[Streams, _Ack], bool] = Coalescer(self._batch)

    async def __call__(self, streams: Streams, ack: _Ack) -> bool:
        return await self._coalescer((streams, ack))

    async def _batch(self, acks: Sequence[tuple[Streams, _Ack]]) -> list[bool]:
        script = load_script("ack_sent")
        calls = [streams.ack_call(ack) for streams, ack in acks]
        # After NOSCRIPT the whole pipeline runs again. An entry already acknowledged answers
        # 0; only an e-mail sent just now would be reported a second time, which the order
        # service ignores (a sent order stays as it was).
        replies = await script.run_many(self._redis, calls)
        return [bool(reply) for reply in replies]


class Streams:
    """One shard's stream state, as seen by one consumer of the notifier group."""

    def __init__(
        self,
        redis: Redis,
        consumer: str,
        group: str = NOTIFIER_GROUP,
        *,
        shard: Shard = _SHARD_0,
        acks: Acks | None = None,
    ) -> None:
        self.redis = redis
        self.consumer = consumer
        self.group = group
        self.shard = shard
        self._claim_cursor = "-"
        self._reap_cursor = "-"
        self._acks = acks or Acks(redis)

    async def ensure_group(self) -> None:
        """Creates the consumer group (and the stream) unless it exists: idempotent."""
        await ensure_group(self.redis, self.shard.events, self.group)

    async def read_new(self, count: int, block_ms: int) -> list[RawEntry]:
        """New entries for this consumer (XREADGROUP >); recreates a vanished group."""
        try:
            reply: Any = await self.redis.xreadgroup(
                self.group, self.consumer, {self.shard.events: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restart without persistence, failover): recreate it from
            # the start of whatever the stream holds; the outbox re-drive refills the rest.
            log.warning(
                "consumer_group_vanished_recreating", group=self.group, shard=self.shard.index
            )
            await self.ensure_group()
            return []
        entries: list[RawEntry] = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                if fields is None:  # deleted between XADD and read
                    continue
                entries.append(RawEntry(as_text(entry_id), fields, 1, self.shard.index))
        return entries

    async def claim_due(
        self,
        *,
        base_ms: int,
        cap_ms: int,
        jitter: float,
        max_deliveries: int,
        limit: int,
        scan: int = 200,
    ) -> ClaimResult:
        """Claims due retries, examining the pending list `scan` entries at a time from where
        the previous call stopped, so entries deep in a long list are reached on schedule."""
        keys, args = self.claim_call(base_ms, cap_ms, jitter, max_deliveries, limit, scan)
        try:
            reply = await load_script("claim_due").run(self.redis, keys, args)
        except ResponseError as exc:
            if not _no_group(exc):
                raise
            return ClaimResult([], [])  # the consumer has not made this shard's group yet
        return self.claimed(reply)

    def claim_call(
        self, base_ms: int, cap_ms: int, jitter: float, max_deliveries: int, limit: int, scan: int
    ) -> tuple[list[str], list[str | int | float]]:
        """claim_due.lua's keys and arguments for this shard, from where its cursor stands."""
        return (
            [self.shard.events, self.shard.last_error, self.shard.held],
            [
                self.group,
                self.consumer,
                base_ms,
                cap_ms,
                jitter,
                max_deliveries,
                limit,
                scan,
                self._claim_cursor,
                now_ms(),
            ],
        )

    def claimed(self, reply: Any) -> ClaimResult:
        """claim_due.lua's reply for this shard; moves its cursor on."""
        claimed_raw, missing, cursor = reply
        self._claim_cursor = as_text(cursor)
        claimed: list[RawEntry] = []
        for entry_id, deliveries, flat in claimed_raw:
            fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
            claimed.append(RawEntry(as_text(entry_id), fields, int(deliveries), self.shard.index))
        return ClaimResult(claimed, [as_text(m) for m in missing])

    async def heartbeat(self, entry_ids: list[str]) -> int:
        if not entry_ids:
            return 0
        refreshed: int = await load_script("heartbeat").run(
            self.redis, [self.shard.events], [self.group, self.consumer, *entry_ids]
        )
        return refreshed

    async def ack_sent(self, entry_id: str, receipt: dict[str, str], *, emailed: bool) -> bool:
        """XACK + `sent` receipt (ack_sent.lua); False if the entry was no longer pending.
        `emailed`: SMTP accepted this entry's e-mail just now, so the receipt goes out even if
        the entry is no longer pending (a sent e-mail is never left reported as dead)."""
        return await self._acks(self, (entry_id, receipt, emailed))

    def ack_call(self, ack: _Ack) -> tuple[list[str], list[str]]:
        """ack_sent.lua's keys and arguments for one acknowledgement on this shard."""
        entry_id, receipt, emailed = ack
        flat = (part for pair in receipt.items() for part in pair)
        keys = [self.shard.events, self.shard.receipts, self.shard.last_error]
        return keys, [self.group, entry_id, "1" if emailed else "0", *flat]

    async def dead_letter(
        self,
        entry_id: str,
        *,
        reason_class: str,
        reason: str,
        min_deliveries: int = 0,
        receipt: bool = True,
    ) -> str | None:
        """Moves a pending entry to the dead stream with a `dead` receipt (dead_letter.lua,
        in the layout of `acme_runtime.deadletter_layout`); the dead id, or None when the entry
        was no longer pending or has had fewer than `min_deliveries` deliveries."""
        dead_id = await load_script("dead_letter").run(
            self.redis,
            [self.shard.events, self.shard.dead, self.shard.receipts, self.shard.last_error],
            [
                self.group,
                entry_id,
                reason_class,
                reason[:1000],
                min_deliveries,
                now_ms(),
                "1" if receipt else "0",
            ],
        )
        return None if not dead_id else as_text(dead_id)

    async def rescind(self, dead_ids: Sequence[str], *, why: str) -> list[str]:
        """Puts dead letters this replica now knows were not the e-mails' fault back on the
        stream (replay_dead.lua, with an audit record naming this consumer); returns the ids
        of the new entries."""
        script = load_script("replay_dead")
        keys = [self.shard.dead, self.shard.events, self.shard.audit]
        at = now_ms()
        calls: list[tuple[Sequence[str], Sequence[str | int]]] = [
            (keys, [dead_id, RESCIND_CAP, "0", at, self.consumer, why[:1000], RESCIND_AUDIT_MAXLEN])
            for dead_id in dead_ids
        ]
        # replay_dead.lua is re-runnable: a dead id already replayed answers not_found.
        replies = await script.run_many(self.redis, calls)
        return [as_text(new_id) for status, new_id, _n in replies if as_text(status) == "replayed"]

    async def record_failure(self, entry_id: str, receipt: dict[str, str], *, refund: bool) -> int:
        """Keeps the last error, tells the order service of the try and, when the server was
        down (`refund`), gives the delivery back. Returns the entry's delivery count."""
        flat = [part for pair in receipt.items() for part in pair]
        deliveries: int = await load_script("attempt_failed").run(
            self.redis,
            [self.shard.events, self.shard.receipts, self.shard.last_error],
            [
                self.group,
                self.consumer,
                entry_id,
                receipt.get("detail", ""),
                "1" if refund else "0",
                *flat,
            ],
        )
        return deliveries

    async def refund(self, entry_id: str) -> int:
        """Gives back the current delivery of an entry this consumer could not attempt."""
        deliveries: int = await load_script("refund").run(
            self.redis, [self.shard.events], [self.group, self.consumer, entry_id]
        )
        return deliveries

    async def recipient_quota(self, address: str, *, cap: int, window_ms: int) -> Quota:
        """Counts this e-mail against its recipient's window, unless the window is full
        (recipient_quota.lua); callers count an event once."""
        now = now_ms()
        current, previous, start = recipient_windows(now, window_ms)
        allowed, counted, release_at = await load_script("recipient_quota").run(
            self.redis,
            [current, previous],
            [now, window_ms, cap, recipient_field(address), start],
        )
        return Quota(bool(allowed), int(counted), int(release_at))

    async def hold(self, entry_id: str, release_at_ms: int, receipt: dict[str, str]) -> int:
        """Keeps an entry pending, unclaimed until `release_at_ms`, gives its delivery back and
        writes the `held` receipt (hold.lua). Returns the entry's delivery count (0 if it was
        no longer pending here)."""
        flat = [part for pair in receipt.items() for part in pair]
        deliveries: int = await load_script("hold").run(
            self.redis,
            [self.shard.events, self.shard.receipts, self.shard.held],
            [self.group, self.consumer, entry_id, release_at_ms, *flat],
        )
        return deliveries

    async def forget_held(self, released_before_ms: int) -> int:
        """Removes held-set members released before this time: their entries were claimed
        long since, or acknowledged or dead-lettered by other means."""
        held = self.shard.held
        removed: int = await self.redis.zremrangebyscore(held, "-inf", released_before_ms)
        return removed

    async def reap_round(
        self,
        *,
        lock_ms: int,
        max_deliveries: int,
        min_idle_ms: int,
        retention_ms: int,
        scan: int = 200,
    ) -> ReapRound | None:
        """One reaper round on this shard in one call (reap_round.lua), or None when another
        replica holds this round's lock. Lists the pending entries that used up their delivery
        budget and sat idle `min_idle_ms` (examined `scan` at a time from where the previous
        round stopped; held entries are waiting, never listed), and trims the entries every
        group acknowledged that are older than the retention: never a pending or unread one."""
        floor_ms = max(0, now_ms() - retention_ms)
        took, exhausted, cursor, trimmed = await load_script("reap_round").run(
            self.redis,
            [self.shard.events, self.shard.reaper_lock, self.shard.held],
            [
                self.group,
                self.consumer,
                lock_ms,
                min_idle_ms,
                max_deliveries,
                scan,
                self._reap_cursor,
                f"{floor_ms}-0",
            ],
        )
        if not took:
            return None
        self._reap_cursor = as_text(cursor)
        return ReapRound([as_text(entry_id) for entry_id in exhausted], int(trimmed))
