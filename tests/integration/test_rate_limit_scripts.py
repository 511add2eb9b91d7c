"""The rate-limit scripts on a real Redis: rate_limit.lua (per key), recipient_quota.lua and
hold.lua (per recipient), and how claim_due.lua and the reaper treat a held entry."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis

from acme_notify.keys import HELD_SET, RECEIPTS_STREAM, recipient_field, recipient_windows
from acme_notify.streams import Streams
from acme_orders.ratelimit import RATE_LIMIT_PREFIX, Policy, RateLimiter
from acme_runtime.clock import now_ms
from tests.integration.test_stream_scripts import add_entry, is_pending, read_one, receipt


def _counter(name: str) -> Counter:
    return Counter(name, name, registry=None)


async def test_the_bucket_lets_the_burst_through_then_refuses_until_it_refills(
    redis: Redis,
) -> None:
    """Burst 3 at 1/s: three allowed (remaining 2, 1, 0), the fourth refused for about 1 s; the
    key expires by itself once the bucket would be full."""
    limiter = RateLimiter(
        redis=redis, policy=Policy(1.0, 3), fail_open=_counter("open"), refused=_counter("no")
    )
    decisions = [await limiter.take("key:k1") for _ in range(4)]
    assert all(d is not None for d in decisions)
    assert [d.allowed for d in decisions if d] == [True, True, True, False]
    assert [d.remaining for d in decisions if d] == [2, 1, 0, 0]
    refused = decisions[3]
    assert refused is not None and refused.retry_after_s == 1
    assert refused.headers()["Retry-After"] == "1"
    assert 0 < await redis.pttl(f"{RATE_LIMIT_PREFIX}key:k1") <= 3_000
    other = await limiter.take("key:k2")
    assert other is not None and other.allowed and other.remaining == 2


async def test_the_recipient_window_folds_the_address_and_keeps_two_keys_in_all(
    redis: Redis,
) -> None:
    """Cap 2: two e-mails pass, a third is held until the estimate falls below the cap;
    `Ana+x@Example.COM` is `ana@example.com`; whatever the recipients, Redis holds one hash
    per window, never a key per address, and no address is readable in it."""
    streams = Streams(redis, "a")
    window_ms = 60_000
    first = await streams.recipient_quota("ana@example.com", cap=2, window_ms=window_ms)
    second = await streams.recipient_quota("Ana+x@Example.COM", cap=2, window_ms=window_ms)
    third = await streams.recipient_quota("ana@example.com", cap=2, window_ms=window_ms)
    assert [q.allowed for q in (first, second, third)] == [True, True, False]
    assert third.counted == 2
    current, _previous, start = recipient_windows(now_ms(), window_ms)
    # Both counted in this window: free again when this window is over and they fade out.
    assert third.release_at_ms == start + window_ms
    for n in range(50):
        assert (
            await streams.recipient_quota(f"r{n}@example.com", cap=2, window_ms=window_ms)
        ).allowed
    field = recipient_field("ana@example.com")
    assert field == recipient_field("ANA+shop@example.com") != recipient_field("bob@example.com")
    assert [k async for k in redis.scan_iter(match="*recipients*")] == [current.encode()]
    assert await redis.hget(current, field) == b"2" and await redis.hlen(current) == 51
    assert not any(b"example" in k for k in await redis.hkeys(current))
    assert window_ms < await redis.pttl(current) <= 2 * window_ms


async def test_the_previous_window_still_counts_as_it_fades(redis: Redis) -> None:
    """A recipient who had the cap's worth late in the previous window is held early in this
    one, and released once the share of the previous window still in the last hour is small
    enough."""
    window_ms = 60_000
    now = now_ms()
    _current, previous, start = recipient_windows(now, window_ms)
    field = recipient_field("ana@example.com")
    await redis.hset(previous, field, 4)
    quota = await Streams(redis, "a").recipient_quota("ana@example.com", cap=2, window_ms=window_ms)
    elapsed = now_ms() - start
    if elapsed < window_ms / 2:  # 4 x (share still inside) >= 2: held
        assert not quota.allowed
        assert quota.release_at_ms == start + window_ms // 2
    else:
        assert quota.allowed


async def test_a_held_entry_gives_its_try_back_is_not_claimed_early_nor_reaped(
    redis: Redis,
) -> None:
    """hold.lua: pending, delivery given back, a `held` receipt; claim_due.lua skips it until
    its release, then claims it (and forgets the hold); the reaper never lists it."""
    owner, claimer = Streams(redis, "a"), Streams(redis, "b")
    entry_id = await add_entry(redis)
    await read_one(owner)
    await redis.xclaim(
        "{acme}:events", "notifier", "a", 0, [entry_id], retrycount=2, justid=True
    )  # a second delivery, as a claim makes it
    deliveries = await owner.hold(entry_id, now_ms() + 60_000, receipt("held", entry_id))
    assert deliveries == 1 and await is_pending(redis, entry_id)
    entries: Any = await redis.xrange(RECEIPTS_STREAM)
    assert [fields[b"type"] for _id, fields in entries] == [b"held"]
    reaped = await owner.reap_round(lock_ms=1_000, max_deliveries=1, min_idle_ms=0, retention_ms=0)
    assert reaped is not None and reaped.exhausted == []

    early = await claimer.claim_due(base_ms=0, cap_ms=0, jitter=0, max_deliveries=1, limit=10)
    assert early.claimed == []
    await redis.zadd(HELD_SET, {entry_id: now_ms() - 1})  # the window has room now
    due = await claimer.claim_due(base_ms=0, cap_ms=0, jitter=0, max_deliveries=1, limit=10)
    assert [e.entry_id for e in due.claimed] == [entry_id]
    assert await redis.zscore(HELD_SET, entry_id) is None

    # Holding an entry this consumer no longer owns is refused.
    assert await owner.hold(entry_id, now_ms() + 60_000, receipt("held", entry_id)) == 0
