"""The claimer and heartbeat actors: retries of failed entries, and no stealing of slow ones.

* `Claimer` takes over pending entries whose backoff has elapsed (claim_due.lua: select and
  XCLAIM atomically, so two replicas never claim the same entry), whether they failed here,
  failed elsewhere, or belong to a replica that crashed. Entries trimmed while pending are
  acknowledged away. On one Redis node a round over N shards is one pipeline, each shard
  claiming a share of the free room; on a cluster the shards are claimed in turn, the first
  one rotating so a shard with many due retries cannot keep the others waiting.
* `Heartbeat` refreshes the idle time of the entries this replica is sending right now
  (heartbeat.lua, XCLAIM JUSTID: no delivery counted), so a slow SMTP server never makes an
  entry look abandoned, and the claimer never sends an e-mail a second time because of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from redis.exceptions import RedisError

from acme_notify.processor import Processor
from acme_notify.streams import ClaimResult, Streams, claim_due_across
from acme_runtime.actors import PeriodicActor, sleep_or_stop
from acme_runtime.redis_client import is_cluster

__all__ = ["Claimer", "Heartbeat"]

log = structlog.get_logger(__name__)


class Claimer(PeriodicActor):
    def __init__(
        self,
        streams: Streams | Sequence[Streams],
        processor: Processor,
        *,
        interval_ms: int,
        base_ms: int,
        cap_ms: int,
        jitter: float,
        max_deliveries: int,
        capacity: Callable[[int], int],
    ) -> None:
        self._shards = (streams,) if isinstance(streams, Streams) else tuple(streams)
        # On a cluster, the shard looked at first this round: each round starts one further,
        # so a shard with many due retries cannot keep the others waiting.
        self._first = 0
        self._processor = processor
        self._base_ms = base_ms
        self._cap_ms = cap_ms
        self._jitter = jitter
        self._max_deliveries = max_deliveries
        self._capacity = capacity
        super().__init__("claimer", self._claim, interval_ms / 1000)

    async def _claim(self) -> bool:
        """One round over every shard; True (go again at once) when a shard filled the room."""
        if len(self._shards) > 1 and not is_cluster(self._shards[0].redis):
            return await self._claim_together()
        count = len(self._shards)
        first, self._first = self._first, (self._first + 1) % count
        more = False
        for step in range(count):
            more |= await self._claim_shard(self._shards[(first + step) % count])
        return more

    async def _claim_together(self) -> bool:
        """One node: every shard's claim in one pipeline, each shard a share of the room (so
        none can take it all); True when a shard filled its share."""
        free = self._capacity(self._processor.free_slots)
        if free <= 0:
            return False
        share = -(-free // len(self._shards))
        results = await claim_due_across(
            self._shards,
            base_ms=self._base_ms,
            cap_ms=self._cap_ms,
            jitter=self._jitter,
            max_deliveries=self._max_deliveries,
            limit=share,
        )
        failures = [result for result in results if isinstance(result, Exception)]
        more = False
        for streams, result in zip(self._shards, results, strict=True):
            if isinstance(result, ClaimResult):
                self._take(streams, result)
                more |= len(result.claimed) >= share
        if failures:
            raise failures[0]  # after the others' claims were taken
        return more

    async def _claim_shard(self, streams: Streams) -> bool:
        free = self._capacity(self._processor.free_slots)
        if free <= 0:
            return False
        # A failure propagates: PeriodicActor logs it, counts it and tries again next round.
        result = await streams.claim_due(
            base_ms=self._base_ms,
            cap_ms=self._cap_ms,
            jitter=self._jitter,
            max_deliveries=self._max_deliveries,
            limit=free,
        )
        self._take(streams, result)
        return len(result.claimed) >= free

    def _take(self, streams: Streams, result: ClaimResult) -> None:
        """Logs a round's findings on a shard and hands its claimed entries to the processor."""
        if result.missing:
            log.warning(
                "pending_entries_missing", shard=streams.shard.index, entry_ids=result.missing
            )
        for entry in result.claimed:
            log.info(
                "entry_claimed",
                shard=entry.shard,
                entry_id=entry.entry_id,
                deliveries=entry.deliveries,
            )
            self._processor.submit(entry)


class Heartbeat:
    name = "heartbeat"

    def __init__(
        self, streams: Streams | Sequence[Streams], processor: Processor, *, interval_ms: int
    ) -> None:
        self._shards = (streams,) if isinstance(streams, Streams) else tuple(streams)
        self._processor = processor
        self._interval_s = interval_ms / 1000

    async def run(self, stop: asyncio.Event) -> None:
        # One loop per shard: a shard whose master is unreachable (a failover, seconds of
        # retries) must not hold back the heartbeats of the others, whose entries would then
        # look abandoned and be claimed, and sent a second time, while still being sent here.
        await asyncio.gather(*(self._beat(streams, stop) for streams in self._shards))

    async def _beat(self, streams: Streams, stop: asyncio.Event) -> None:
        # Keeps beating after `stop` while sends drain, so a graceful shutdown never lets
        # another replica claim (and send again) an e-mail this one is still sending.
        index = streams.shard.index
        while not stop.is_set() or self._processor.in_flight:
            entry_ids = self._processor.in_flight_by_shard().get(index)
            if entry_ids:
                try:
                    await streams.heartbeat(entry_ids)
                except (RedisError, OSError) as exc:
                    log.warning("heartbeat_failed", shard=index, error=repr(exc))
            if stop.is_set():
                await asyncio.sleep(min(self._interval_s, 0.5))
            else:
                await sleep_or_stop(stop, self._interval_s)
