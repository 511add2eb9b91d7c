"""A notifier replica's reads over several shards on a real Redis Cluster: one reader per
shard (a cluster cannot read streams of different slots in one call), slots never promised
twice, a shard with a backlog takes every slot but one per idle shard, and shards with
backlogs share the slots as sends finish."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis

from acme_notify.streams import RawEntry, Streams
from acme_runtime.channels import shard
from tests.harness import eventually
from tests.integration.test_sharded_reads import backlog, has, run_consumer, stopped


async def test_a_backlog_on_one_shard_takes_every_slot_but_one_per_idle_shard(
    cluster: Redis,
) -> None:
    for i in (0, 1, 3):
        await Streams(cluster, "seed", shard=shard(i)).ensure_group()
    await backlog(cluster, 2, 40)
    processor, stop, task = await run_consumer(cluster, shards=4, slots=16)
    try:
        await eventually(has(processor, 13), timeout_s=10)
        await asyncio.sleep(0.3)  # several block periods: nothing more may be read
        assert processor.by_shard() == {2: 13}, "3 idle shards hold one slot each"
        # An entry on an idle shard takes the slot its reader held for it.
        await cluster.xadd(shard(3).events, {"n": "late"})
        await eventually(has(processor, 1, shard_index=3), timeout_s=5)
        await asyncio.sleep(0.2)
    finally:
        await stopped(stop, task)
    assert len(processor.entries) <= 16, "never more read than there were slots"


async def test_shards_with_backlogs_share_the_slots_as_sends_finish(cluster: Redis) -> None:
    """Three shards (on three masters) with a backlog each, 6 slots, a send finishing every
    10 ms: each shard gets a fair part of what is read."""
    for i in (0, 2, 4):
        await backlog(cluster, i, 100)
    processor, stop, task = await run_consumer(cluster, shards=5, slots=6)
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
    assert set(counts) == {0, 2, 4}, counts
    assert min(counts.values()) >= 0.2 * sum(counts.values()), counts
