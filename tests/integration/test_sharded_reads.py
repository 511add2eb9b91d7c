"""A notifier replica's reads over several shards on one real Redis node: one XREADGROUP covers
every shard (what arrives together starts together), every shard is served, entries with the
same id on two shards stay apart, a shard with a backlog can take every slot, and no shard
with a backlog starves another. The per-shard readers a Redis Cluster needs are tested on a
real cluster: tests/cluster/test_cluster_reads.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from acme_notify.consumer import Consumer
from acme_notify.streams import RawEntry, Streams
from acme_runtime.channels import shard
from tests.harness import eventually


class Holding:
    """The processor port: keeps every entry it is handed in flight (a slot each), never
    finishing one, so what the consumer reads is exactly what it had room for."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.entries: list[RawEntry] = []
        self.slot_freed = asyncio.Event()

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.entries)

    def submit(self, entry: RawEntry) -> None:
        self.entries.append(entry)

    async def drain(self) -> None:
        return None

    def by_shard(self) -> Counter[int]:
        return Counter(entry.shard for entry in self.entries)


def has(processor: Holding, count: int, shard_index: int | None = None) -> Callable[[], Any]:
    """An awaitable check for `eventually`: at least `count` entries (of one shard) handed."""

    async def check() -> bool:
        if shard_index is None:
            return len(processor.entries) >= count
        return processor.by_shard()[shard_index] >= count

    return check


async def run_consumer(
    redis: Redis, shards: int, slots: int, linger_ms: int = 0
) -> tuple[Holding, asyncio.Event, asyncio.Task[None]]:
    processor = Holding(slots)
    consumer = Consumer(
        [Streams(redis, "n1", shard=shard(i)) for i in range(shards)],
        processor,  # type: ignore[arg-type]
        block_ms=50,
        capacity=lambda free: free,
        linger_ms=linger_ms,
    )
    stop = asyncio.Event()
    return processor, stop, asyncio.create_task(consumer.run(stop))


async def stopped(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def backlog(redis: Redis, shard_index: int, count: int) -> None:
    await Streams(redis, "seed", shard=shard(shard_index)).ensure_group()
    for n in range(count):
        await redis.xadd(shard(shard_index).events, {"n": str(n)})


async def test_every_shard_is_read_and_equal_entry_ids_on_two_shards_stay_apart(
    redis: Redis,
) -> None:
    for i in range(3):
        await Streams(redis, "seed", shard=shard(i)).ensure_group()
        await redis.xadd(shard(i).events, {"n": str(i)}, id="5-1")
    processor, stop, task = await run_consumer(redis, shards=3, slots=32)
    try:
        await eventually(has(processor, 3), timeout_s=5)
    finally:
        await stopped(stop, task)
    assert sorted((e.shard, e.entry_id, e.fields[b"n"]) for e in processor.entries) == [
        (0, "5-1", b"0"),
        (1, "5-1", b"1"),
        (2, "5-1", b"2"),
    ]


async def test_a_backlog_on_one_shard_takes_every_slot(redis: Redis) -> None:
    for i in (0, 1, 3):
        await Streams(redis, "seed", shard=shard(i)).ensure_group()
    await backlog(redis, 2, 40)
    processor, stop, task = await run_consumer(redis, shards=4, slots=16)
    try:
        await eventually(has(processor, 16), timeout_s=5)
        await asyncio.sleep(0.3)  # several block periods: nothing more may be read
    finally:
        await stopped(stop, task)
    assert processor.by_shard() == {2: 16}, "never more read than there were slots"


async def test_a_trickle_on_every_shard_is_read_in_one_call_per_read(redis: Redis) -> None:
    """Entries arriving on 4 shards while the reader lingers come back in one XREADGROUP,
    counted by the server itself (INFO commandstats)."""
    for i in range(4):
        await Streams(redis, "seed", shard=shard(i)).ensure_group()
    processor, stop, task = await run_consumer(redis, shards=4, slots=32, linger_ms=300)
    try:
        await redis.xadd(shard(0).events, {"n": "first"})
        await eventually(has(processor, 1), timeout_s=5)
        before = await xreadgroup_calls(redis)
        for i in range(4):  # during the linger after that lone first entry
            await redis.xadd(shard(i).events, {"n": "second"})
        await eventually(has(processor, 5), timeout_s=5)
        calls = await xreadgroup_calls(redis) - before
    finally:
        await stopped(stop, task)
    assert processor.by_shard() == {0: 2, 1: 1, 2: 1, 3: 1}
    assert calls == 1, f"{calls} XREADGROUP calls for entries of 4 shards"


async def xreadgroup_calls(redis: Redis) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def test_shards_with_backlogs_share_the_slots_as_sends_finish(redis: Redis) -> None:
    """Three shards with a backlog each, 6 slots, a send finishing every 10 ms: each shard
    gets a fair part of what is read (a first read may favour whichever reader is quicker
    off the mark; the sharing as slots free decides the rest)."""
    for i in range(3):
        await backlog(redis, i, 100)
    processor, stop, task = await run_consumer(redis, shards=3, slots=6)
    finished: list[RawEntry] = []
    try:
        for _ in range(90):  # bounded: 90 sends finished, ~1 s
            await asyncio.sleep(0.01)
            if processor.entries:
                finished.append(processor.entries.pop(0))
                processor.slot_freed.set()
    finally:
        await stopped(stop, task)
    counts = Counter(entry.shard for entry in finished)
    assert sum(counts.values()) >= 80
    assert set(counts) == {0, 1, 2} and min(counts.values()) >= 0.2 * sum(counts.values()), counts
