"""The notifier's reads on a real Redis stream: a trickle of entries is read several at a time
(the linger, so their database and Redis work is shared), a backlog is read without waiting,
and with every send slot busy the next read comes as soon as a slot frees."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from acme_notify.consumer import Consumer
from acme_notify.keys import EVENTS_STREAM
from acme_notify.streams import RawEntry, Streams
from tests.harness import eventually


class Recording:
    """The processor port, recording what it is handed: as many free slots as configured."""

    def __init__(self, slots: int) -> None:
        self.free_slots = slots
        self.entries: list[RawEntry] = []
        self.slot_freed = asyncio.Event()

    def submit(self, entry: RawEntry) -> None:
        self.entries.append(entry)

    async def drain(self) -> None:
        return None


class CountingStreams(Streams):
    """The real Streams, noting how many entries each read brought."""

    reads: list[int]

    async def read_new(self, count: int, block_ms: int) -> list[RawEntry]:
        entries = await super().read_new(count, block_ms)
        if entries:
            self.reads.append(len(entries))
        return entries


async def run_consumer(
    redis: Redis, slots: int, linger_ms: int, recheck_s: float = 0.05
) -> tuple[CountingStreams, Recording, asyncio.Event, asyncio.Task[None]]:
    streams = CountingStreams(redis, "n1")
    streams.reads = []
    processor = Recording(slots)
    consumer = Consumer(
        streams,
        processor,  # type: ignore[arg-type]
        block_ms=50,
        capacity=lambda free: free,
        linger_ms=linger_ms,
        recheck_s=recheck_s,
    )
    stop = asyncio.Event()
    return streams, processor, stop, asyncio.create_task(consumer.run(stop))


async def add(redis: Redis, count: int) -> None:
    for n in range(count):
        await redis.xadd(EVENTS_STREAM, {"n": str(n)})


async def test_a_trickle_is_read_several_entries_at_a_time_while_lingering(redis: Redis) -> None:
    streams, processor, stop, task = await run_consumer(redis, slots=32, linger_ms=300)
    try:
        await add(redis, 1)
        await eventually(lambda: _handed(processor, 1), timeout_s=5)
        # Arriving during the linger after that first, lone read: picked up by one read.
        await add(redis, 3)
        await eventually(lambda: _handed(processor, 4), timeout_s=5)
    finally:
        stop.set()
        await task
    assert streams.reads == [1, 3]


async def test_without_a_linger_each_entry_of_a_trickle_is_read_on_its_own(redis: Redis) -> None:
    streams, processor, stop, task = await run_consumer(redis, slots=32, linger_ms=0)
    try:
        for n in range(3):
            await add(redis, 1)
            await eventually(lambda n=n: _handed(processor, n + 1), timeout_s=5)
    finally:
        stop.set()
        await task
    assert streams.reads == [1, 1, 1]


async def test_a_backlog_fills_every_read_and_is_read_without_lingering(redis: Redis) -> None:
    await Streams(redis, "n1").ensure_group()
    await add(redis, 10)
    started = asyncio.get_running_loop().time()
    streams, processor, stop, task = await run_consumer(redis, slots=4, linger_ms=5_000)
    try:
        await eventually(lambda: _handed(processor, 8), timeout_s=3)
    finally:
        stop.set()
        await task
    assert streams.reads[:2] == [4, 4], "full reads, one after the other"
    assert asyncio.get_running_loop().time() - started < 3, "no linger between full reads"


async def _handed(processor: Recording, count: int) -> bool:
    return len(processor.entries) >= count


async def test_with_every_slot_busy_the_next_read_comes_as_soon_as_a_slot_frees(
    redis: Redis,
) -> None:
    """Not after a polling period: with the recheck made 10 s long, only the wake-up can read
    the backlog within the test's 3 s."""
    await Streams(redis, "n1").ensure_group()
    await add(redis, 5)
    streams, processor, stop, task = await run_consumer(redis, slots=0, linger_ms=0, recheck_s=10.0)
    try:
        await asyncio.sleep(0.2)  # the consumer is waiting for a slot: nothing read yet
        assert processor.entries == []
        processor.free_slots = 5
        processor.slot_freed.set()
        await eventually(lambda: _handed(processor, 5), timeout_s=3)
    finally:
        stop.set()
        processor.slot_freed.set()
        await task
    assert streams.reads == [5]
