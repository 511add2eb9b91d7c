"""The reaper actor: dead-letters entries that used up their deliveries, and trims the stream.

One reaper per shard, each with its own lock, so a shard's reaping never waits on another's.

Only one replica needs to reap per round: it takes a short lock (SET NX PX). Concurrent reapers
would still be safe, because dead_letter.lua re-checks, atomically, that the entry is pending
and over budget before moving it. Trimming removes only entries that every group acknowledged
and that are older than the retention; never a pending or undelivered one. Entries held over
their recipient's cap (lua/hold.lua) are never reaped: they are waiting, not failing.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Counter

from acme_notify.streams import Streams
from acme_runtime.actors import PeriodicActor
from acme_runtime.clock import now_ms
from acme_runtime.consumers import prune_consumers

__all__ = ["Reaper"]

log = structlog.get_logger(__name__)

#: A consumer with nothing pending and silent this long left for good (a rollout, a scale-down).
CONSUMER_GONE_AFTER_MS = 3_600_000
#: A held-set member released this long ago has no entry left to hold: its entry was claimed at
#: release (which removes it) or settled by other means.
HELD_FORGET_AFTER_MS = 3_600_000
_PRUNE_EVERY_S = 60.0


class Reaper(PeriodicActor):
    def __init__(
        self,
        streams: Streams,
        *,
        interval_ms: int,
        max_deliveries: int,
        min_idle_ms: int,
        retention_ms: int,
        dead_lettered: Counter | None = None,
    ) -> None:
        self._dead_counter = dead_lettered
        self._streams = streams
        self._max_deliveries = max_deliveries
        self._min_idle_ms = min_idle_ms
        self._retention_ms = retention_ms
        self._interval_ms = interval_ms
        self.dead_lettered = 0
        self._next_prune = 0.0
        name = "reaper" if streams.shard.index == 0 else f"reaper-{streams.shard.index}"
        super().__init__(name, self._reap, interval_ms / 1000)

    async def _prune_departed(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY_S
        gone = await prune_consumers(
            self._streams.redis,
            self._streams.shard.events,
            self._streams.group,
            min_idle_ms=CONSUMER_GONE_AFTER_MS,
            keep=self._streams.consumer,
        )
        if gone:
            log.info("departed_consumers_pruned", consumers=gone)
        await self._streams.forget_held(now_ms() - HELD_FORGET_AFTER_MS)

    async def _reap(self) -> bool:
        # A failure propagates: PeriodicActor logs it, counts it and tries again next round.
        found = await self._streams.reap_round(
            lock_ms=self._interval_ms,
            max_deliveries=self._max_deliveries,
            min_idle_ms=self._min_idle_ms,
            retention_ms=self._retention_ms,
        )
        if found is None:  # another replica reaps this shard this round
            return False
        for entry_id in found.exhausted:
            dead_id = await self._streams.dead_letter(
                entry_id,
                reason_class="max_deliveries",
                reason=f"not delivered after {self._max_deliveries} attempts",
                min_deliveries=self._max_deliveries,
            )
            if dead_id is not None:
                self.dead_lettered += 1
                if self._dead_counter is not None:
                    self._dead_counter.inc()
                log.warning(
                    "entry_dead_lettered",
                    shard=self._streams.shard.index,
                    entry_id=entry_id,
                    dead_id=dead_id,
                    reason_class="max_deliveries",
                )
        await self._prune_departed()
        return False
