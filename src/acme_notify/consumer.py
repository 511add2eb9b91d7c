"""The consumer actor: reads new entries for this replica (XREADGROUP >) into the processor.

It reads only as many entries as there are free send slots, so nothing read waits in a local
queue growing stale, and it does not read at all while the SMTP circuit is open: undelivered
entries then stay in the stream without burning delivery counts. After a read that did not fill
the free slots (the stream is keeping up), it lingers `linger_ms` before the next one: at the
brief's peak a replica then handles a few entries per read instead of one, and their ledger
look-ups and records, Redis scripts and wake-ups are shared (acme_runtime.coalesce); with a
backlog every read is full and nothing waits. Stopping means: stop reading;
the supervisor's grace period lets the in-flight sends finish.

With several shards (`ACME_STREAM_SHARDS`) on one Redis node, one read covers every shard
(`read_new_across`: XREADGROUP over their streams, each shard's share of the free slots from
each), so what arrives together starts together and the processor's batching is what it is
with one shard. A Redis Cluster cannot read streams of different slots in one call, so there
one reader per shard blocks on its own stream. Slots are never promised twice: a read
reserves the slots it asks for until it returns. A reader whose last read found nothing waits
on its stream for one entry only (one slot reserved); once its shard is busy it asks for its
share of the free slots (their number over the shards', rounded up), read after read. So no
shard can starve another, and a shard with a backlog can take every slot but one per idle
shard. With one shard it reads exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence

import structlog
from redis.exceptions import RedisError

from acme_notify.processor import Processor
from acme_notify.streams import RawEntry, Streams, read_new_across
from acme_runtime.actors import sleep_or_stop
from acme_runtime.backoff import Backoff
from acme_runtime.consumers import prune_consumers
from acme_runtime.redis_client import is_cluster

__all__ = ["Consumer"]

log = structlog.get_logger(__name__)

#: With nothing to read for (slots full, or the breaker holding reads), the longest wait
#: before the consumer looks again.
RECHECK_S = 0.05


class Consumer:
    name = "consumer"

    def __init__(
        self,
        streams: Streams | Sequence[Streams],
        processor: Processor,
        *,
        block_ms: int,
        capacity: Callable[[int], int],
        linger_ms: int = 0,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._shards = (streams,) if isinstance(streams, Streams) else tuple(streams)
        self._processor = processor
        self._block_ms = block_ms
        self._capacity = capacity
        self._linger_s = linger_ms / 1000
        self._recheck_s = recheck_s
        #: Slots asked for by the reads out now.
        self._reserved = 0

    async def run(self, stop: asyncio.Event) -> None:
        for streams in self._shards:
            await streams.ensure_group()
        if len(self._shards) > 1 and not is_cluster(self._shards[0].redis):
            await self._read(self._shards, stop)  # one node: one read for every shard
        else:
            await asyncio.gather(*(self._read([streams], stop) for streams in self._shards))
        await self._processor.drain()
        # Leaving with nothing pending: take our name out of each group (with entries still
        # pending it stays, so that its entries remain claimable by the others).
        for streams in self._shards:
            with contextlib.suppress(RedisError, OSError):
                await prune_consumers(
                    streams.redis,
                    streams.shard.events,
                    streams.group,
                    min_idle_ms=0,
                    only=streams.consumer,
                )

    def _ask(self, idle: bool, together: int) -> int:
        """How many entries a reader of `together` shards asks each of them for now (0: no
        room); `idle`: its last read found nothing."""
        free = self._capacity(self._processor.free_slots - self._reserved)
        if free <= 0 or len(self._shards) == 1:
            return free
        if together > 1:  # one read for every shard: a share from each
            return -(-free // together)
        return 1 if idle else -(-free // len(self._shards))

    async def _read_new(self, shards: Sequence[Streams], count: int) -> list[RawEntry]:
        if len(shards) == 1:
            return await shards[0].read_new(count, self._block_ms)
        return await read_new_across(shards, count, self._block_ms)

    async def _read(self, shards: Sequence[Streams], stop: asyncio.Event) -> None:
        backoff = Backoff(first_s=0.1, max_s=5.0)
        idle = True
        label = shards[0].shard.index if len(shards) == 1 else "all"
        while not stop.is_set():
            count = self._ask(idle, len(shards))
            if count <= 0:
                # Every slot busy: read again as soon as a quarter of them are free (a backlog
                # is read at the pace sends finish, not at a polling period's, a few entries
                # per read); the breaker holding the reads (capacity 0 with slots free) is
                # looked at again every 50 ms.
                self._processor.slot_freed.clear()
                await sleep_or_stop(stop, self._recheck_s, wake=self._processor.slot_freed)
                continue
            reserved = count * len(shards)
            self._reserved += reserved
            try:
                try:
                    entries = await self._read_new(shards, count)
                finally:
                    self._reserved -= reserved
                backoff.reset()
            except (RedisError, OSError) as exc:
                delay_s = backoff.next_s()
                log.warning("read_failed", shard=label, error=repr(exc), retry_in_s=delay_s)
                await sleep_or_stop(stop, delay_s)
                continue
            idle = not entries
            for entry in entries:
                self._processor.submit(entry)
            # A read some shard filled means a backlog there: read on at once.
            backlog = max(Counter(entry.shard for entry in entries).values(), default=0) >= count
            if entries and not backlog and self._linger_s > 0:
                await sleep_or_stop(stop, self._linger_s)
