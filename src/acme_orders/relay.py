"""The outbox relay: publishes what the fast path missed, and re-drives what Redis lost.

Two actors, both safe to run in many replicas at once because each locks its rows with
`FOR UPDATE SKIP LOCKED` and publishes through `publish_once.lua`:

* `OutboxRelay` publishes events still unpublished `relay_grace_ms` after their commit (the API
  crashed, Redis was down, the fast path's queue was full). It polls every `relay_poll_ms` and
  wakes early on a NOTIFY from the API; the NOTIFY is a hint, the poll is the guarantee.
* `Redriver` publishes again every event that has had no receipt for `redrive_after_s`. If Redis
  still holds the event, publish_once answers "already published" and nothing happens; if Redis
  lost it (a restart without persistence, a failover), it goes back on the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_orders.publisher import RELAY_WAKE_CHANNEL, publish_batch
from acme_orders.store import Conn, OrderStore, OutboxEvent
from acme_runtime.actors import sleep_or_stop

__all__ = ["OutboxRelay", "Redriver", "redrive_once", "relay_once"]

log = structlog.get_logger(__name__)


async def relay_once(
    store: OrderStore,
    redis: Redis,
    *,
    grace_ms: int,
    batch: int,
    dedupe_ttl_s: int,
    published: Counter | None = None,
    shards: int = 1,
) -> int:
    """Publishes one batch of unpublished events; returns how many it found."""
    return await _publish_locked(
        store,
        redis,
        partial(store.lock_unpublished, grace_ms=grace_ms, limit=batch),
        via="relay",
        dedupe_ttl_s=dedupe_ttl_s,
        published=published,
        shards=shards,
    )


async def redrive_once(
    store: OrderStore,
    redis: Redis,
    *,
    older_than_s: int,
    batch: int,
    dedupe_ttl_s: int,
    published: Counter | None = None,
    shards: int = 1,
) -> int:
    """Publishes again one batch of unconfirmed events; returns how many it looked at."""
    return await _publish_locked(
        store,
        redis,
        partial(store.lock_unconfirmed, older_than_s=older_than_s, limit=batch),
        via="redrive",
        dedupe_ttl_s=dedupe_ttl_s,
        published=published,
        shards=shards,
    )


async def _publish_locked(
    store: OrderStore,
    redis: Redis,
    lock: Callable[[Conn], Awaitable[list[OutboxEvent]]],
    *,
    via: str,
    dedupe_ttl_s: int,
    published: Counter | None,
    shards: int,
) -> int:
    """Locks a batch (SKIP LOCKED), publishes it once, records it, in one transaction."""
    async with store.pool.acquire() as conn, conn.transaction():
        events = await lock(conn)
        if not events:
            return 0
        results = await publish_batch(redis, events, dedupe_ttl_s, via=via, shards=shards)
        await store.mark_published(conn, results, via=via)
    added = sum(result.added for result in results)
    if published is not None:
        published.inc(added)
    if via == "relay":
        log.info("relay_published", events=len(events), added=added)
    elif added:
        # Redis had lost these: worth a warning (and an alert if it keeps happening).
        log.warning("redrive_republished", events=added, checked=len(events))
    return len(events)


class OutboxRelay:
    name = "outbox-relay"

    def __init__(
        self,
        store: OrderStore,
        redis: Redis,
        database_url: str,
        *,
        poll_ms: int,
        grace_ms: int,
        batch: int,
        dedupe_ttl_s: int,
        published: Counter | None = None,
        shards: int = 1,
    ) -> None:
        self._store = store
        self._redis = redis
        self._published = published
        self._shards = shards
        self._database_url = database_url
        self._poll_s = poll_ms / 1000
        self._grace_ms = grace_ms
        self._batch = batch
        self._dedupe_ttl_s = dedupe_ttl_s
        self._wake = asyncio.Event()

    async def _listen(self) -> asyncpg.Connection | None:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(self._database_url)
            await conn.add_listener(RELAY_WAKE_CHANNEL, self._on_notify)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("relay_listen_failed", error=repr(exc))
            return None
        return conn

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        listener = await self._listen()
        try:
            while not stop.is_set():
                found = 0
                try:
                    found = await relay_once(
                        self._store,
                        self._redis,
                        grace_ms=self._grace_ms,
                        batch=self._batch,
                        dedupe_ttl_s=self._dedupe_ttl_s,
                        published=self._published,
                        shards=self._shards,
                    )
                except (RedisError, asyncpg.PostgresError, OSError) as exc:
                    log.warning("relay_failed", error=repr(exc))
                if found < self._batch:
                    if listener is None or listener.is_closed():
                        listener = await self._listen()
                    await sleep_or_stop(stop, self._poll_s, self._wake)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close(timeout=2)


class Redriver:
    name = "redriver"

    def __init__(
        self,
        store: OrderStore,
        redis: Redis,
        *,
        older_than_s: int,
        batch: int,
        dedupe_ttl_s: int,
        published: Counter | None = None,
        shards: int = 1,
    ) -> None:
        self._published = published
        self._shards = shards
        self._store = store
        self._redis = redis
        self._older_than_s = older_than_s
        self._batch = batch
        self._dedupe_ttl_s = dedupe_ttl_s
        # Checking a few times per re-drive period keeps the worst-case extra delay small.
        self._interval_s = max(1.0, older_than_s / 4)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            found = 0
            try:
                found = await redrive_once(
                    self._store,
                    self._redis,
                    older_than_s=self._older_than_s,
                    batch=self._batch,
                    dedupe_ttl_s=self._dedupe_ttl_s,
                    published=self._published,
                    shards=self._shards,
                )
            except (RedisError, asyncpg.PostgresError, OSError) as exc:
                log.warning("redrive_failed", error=repr(exc))
            if found < self._batch:
                await sleep_or_stop(stop, self._interval_s)
