"""The archiver actor: keeps the dead stream bounded by moving its oldest entries to PostgreSQL.

Each round moves, a batch at a time and oldest first, the entries over `ACME_DEAD_MAX_ENTRIES`
and those older than `ACME_DEAD_RETENTION_S` to `notify.dead_letters` (dead_archive.py), then
deletes archive rows older than `ACME_DEAD_ARCHIVE_RETENTION_S`. A move has two steps, in this
order, so that no entry is ever in neither place:

1. the rows are inserted and committed (`ON CONFLICT DO NOTHING`: a row left by a round that
   crashed after this step is simply kept);
2. `archive_dead.lua` XDELs the ids still in the stream and says which. An id already gone was
   replayed or purged by an operator in between, so its row is deleted again.

Each shard's dead stream has its own archiver and lock; its rows are named
`acme_runtime.channels.qualify(shard, id)` (`3/<ms>-<seq>`; shard 0's keep the bare id), since
stream ids are unique per stream only.

A crash between the two leaves an entry in both places; readers show the stream's copy, and the
next round finishes the move. One replica works per round under a `SET NX PX` lock. The lock is
also the fence that makes step 2 sound: the script runs only while this round's token still
holds the lock, so no other archiver can have removed an entry this round read.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis

from acme_notify.dead_archive import ArchivedEntry, DeadArchive
from acme_runtime.actors import PeriodicActor
from acme_runtime.channels import Shard, qualify, shard
from acme_runtime.clock import now_ms
from acme_runtime.lua import load_script
from acme_runtime.text import as_text

__all__ = ["ARCHIVE_INTERVAL_S", "Archiver"]

log = structlog.get_logger(__name__)

#: How often a replica tries to take the round (the dead stream grows slowly).
ARCHIVE_INTERVAL_S: Final = 10.0
#: Entries moved per batch; a full batch runs the next one at once.
MOVE_BATCH: Final = 500
#: Expired archive rows deleted per statement.
EXPIRE_BATCH: Final = 1_000
_SHARD_0: Final = shard(0)


class Archiver(PeriodicActor):
    def __init__(
        self,
        redis: Redis,
        archive: DeadArchive,
        *,
        owner: str,
        max_entries: int,
        retention_s: int,
        archive_retention_s: int,
        interval_s: float = ARCHIVE_INTERVAL_S,
        batch: int = MOVE_BATCH,
        archived: Counter | None = None,
        expired: Counter | None = None,
        on: Shard = _SHARD_0,
    ) -> None:
        self._redis = redis
        self._shard = on
        self._archive = archive
        # Unique per actor: a lock held under it can only be this actor's.
        self._token = f"{owner}:{secrets.token_hex(6)}"
        self._max_entries = max_entries
        self._retention_ms = retention_s * 1000
        self._archive_retention_s = archive_retention_s
        self._lock_ms = max(1, int(interval_s * 1000))
        self._batch = batch
        self._archived = archived
        self._expired = expired
        name = "dead-archiver" if on.index == 0 else f"dead-archiver-{on.index}"
        super().__init__(name, self.archive_round, interval_s)

    async def _take_lock(self) -> bool:
        lock = self._shard.archiver_lock
        if await self._redis.set(lock, self._token, nx=True, px=self._lock_ms):
            return True
        # Still ours from the previous (full) batch: archive_dead.lua extended it.
        return await self._redis.get(lock) == self._token.encode()

    async def archive_round(self) -> bool:
        """One round: a batch moved and a batch expired; True when either was full."""
        # A failure propagates: PeriodicActor logs it, counts it and tries again next round.
        if not await self._take_lock():
            return False
        moved = await self.move_batch()
        # The archive is one table for every shard: shard 0's archiver (every replica has one,
        # whatever the shard count) expires it, rather than each shard's the same rows.
        expired = 0
        if self._shard.index == 0:
            expired = await self._archive.expire(self._archive_retention_s, EXPIRE_BATCH)
        if expired:
            if self._expired is not None:
                self._expired.inc(expired)
            log.info("dead_archive_expired", rows=expired)
        return moved >= self._batch or expired >= EXPIRE_BATCH

    async def move_batch(self) -> int:
        """Moves one batch of evictable entries; how many it examined (0: nothing to do)."""
        cutoff = f"{now_ms() - self._retention_ms}-0"
        reply: Any = await load_script("dead_evictable").run(
            self._redis, [self._shard.dead], [self._max_entries, cutoff, self._batch]
        )
        index = self._shard.index
        entries = [
            ArchivedEntry(qualify(index, as_text(dead_id)), list(flat)) for dead_id, flat in reply
        ]
        if not entries:
            return 0
        await self._archive.insert(entries)
        ids = [as_text(dead_id) for dead_id, _flat in reply]
        deleted: Any = await load_script("archive_dead").run(
            self._redis,
            [self._shard.dead, self._shard.archiver_lock],
            [self._token, self._lock_ms, *ids],
        )
        if deleted is None:
            # Another replica holds the lock now: the rows stay, the entries too; its round,
            # or ours later, finishes the move (the insert keeps existing rows).
            log.warning("dead_archiver_lost_lock", entries=len(ids))
            return 0
        removed = {qualify(index, as_text(d)) for d in deleted}
        gone = [e.dead_id for e in entries if e.dead_id not in removed]
        if gone:
            await self._archive.delete(gone)
            log.info("dead_archive_skipped_removed_meanwhile", dead_ids=gone[:20], count=len(gone))
        if removed:
            if self._archived is not None:
                self._archived.inc(len(removed))
            log.info(
                "dead_letters_archived",
                count=len(removed),
                oldest=entries[0].dead_id,
                newest=entries[-1].dead_id,
            )
        return len(entries)
