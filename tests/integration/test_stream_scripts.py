"""The notifier's stream scripts on a real Redis: what each one writes, and what it leaves alone.

Each test drives `Streams` (the scripts' typed wrappers) into the state a race leaves behind
(acknowledged, deleted, dead-lettered while a send was in flight) and asserts on the keys.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_notify.keys import (
    DEAD_STREAM,
    EVENTS_STREAM,
    LAST_ERROR_HASH,
    NOTIFIER_GROUP,
    RECEIPTS_STREAM,
)
from acme_notify.streams import ClaimResult, ReapRound, Streams, claim_due_across
from acme_runtime.channels import shard
from acme_runtime.ids import uuid7
from tests.harness import eventually


async def add_entry(redis: Redis) -> str:
    """One event on the stream, with the flat ids the scripts read; returns its entry id."""
    fields = {"event_id": str(uuid7()), "order_id": str(uuid7()), "data": "{}"}
    entry_id: Any = await redis.xadd(EVENTS_STREAM, fields)
    return str(entry_id.decode())


async def read_one(streams: Streams) -> str:
    """Reads the next entry as `streams`' consumer; it is then pending (delivered once)."""
    await streams.ensure_group()
    [(entry_id, *_rest)] = await streams.read_new(1, 10)
    return entry_id


def receipt(kind: str, entry_id: str, detail: str = "") -> dict[str, str]:
    return {
        "type": kind,
        "event_id": str(uuid7()),
        "order_id": str(uuid7()),
        "at_ms": "1800000000000",
        "attempts": "1",
        "consumer": "a",
        "reason_class": "",
        "detail": detail or f"{kind} of {entry_id}",
    }


async def receipt_kinds(redis: Redis) -> list[str]:
    """The receipts stream's `type` fields, oldest first."""
    entries: Any = await redis.xrange(RECEIPTS_STREAM)
    return [fields[b"type"].decode() for _id, fields in entries]


async def reap(
    streams: Streams, *, retention_ms: int = 0, max_deliveries: int = 6
) -> ReapRound | None:
    """One reaper round as the Reaper runs it (its lock for a second)."""
    return await streams.reap_round(
        lock_ms=1_000, max_deliveries=max_deliveries, min_idle_ms=0, retention_ms=retention_ms
    )


async def is_pending(redis: Redis, entry_id: str) -> bool:
    rows: Any = await redis.xpending_range(EVENTS_STREAM, NOTIFIER_GROUP, entry_id, entry_id, 1)
    return bool(rows)


@pytest.mark.parametrize("refund", [False, True])
async def test_a_failure_of_an_acknowledged_entry_writes_nothing(
    redis: Redis, refund: bool
) -> None:
    """record_failure for an entry acknowledged meanwhile returns 0 and writes neither a
    last-error field nor a receipt; a pending neighbour gets both."""
    streams = Streams(redis, "a")
    acked_id = await add_entry(redis)
    pending_id = await add_entry(redis)
    await streams.ensure_group()
    await streams.read_new(2, 10)
    assert await redis.xack(EVENTS_STREAM, streams.group, acked_id) == 1

    failure = receipt("attempt_failed", acked_id, "451 4.3.0 try later")
    assert await streams.record_failure(acked_id, failure, refund=refund) == 0
    assert not await redis.hexists(LAST_ERROR_HASH, acked_id)
    assert await receipt_kinds(redis) == []

    control = receipt("attempt_failed", pending_id, "451 4.3.0 try later")
    assert await streams.record_failure(pending_id, control, refund=refund) == 1
    assert await redis.hget(LAST_ERROR_HASH, pending_id) == b"451 4.3.0 try later"
    assert await receipt_kinds(redis) == ["attempt_failed"]
    assert await redis.hkeys(LAST_ERROR_HASH) == [pending_id.encode()]


async def test_a_claim_acknowledges_a_deleted_entry_and_forgets_its_last_error(
    redis: Redis,
) -> None:
    """A pending entry deleted from the stream (XDEL) after a failed try: another consumer's
    claim_due reports it missing, acknowledges it and deletes its last-error field."""
    a, b = Streams(redis, "a"), Streams(redis, "b")
    entry_id = await add_entry(redis)
    assert await read_one(a) == entry_id
    failure = receipt("attempt_failed", entry_id, "450 4.2.0 mailbox busy")
    assert await a.record_failure(entry_id, failure, refund=False) == 1
    assert await redis.hexists(LAST_ERROR_HASH, entry_id)
    assert await redis.xdel(EVENTS_STREAM, entry_id) == 1

    claims: list[ClaimResult] = []

    async def claimed_something() -> bool:
        # Nothing is examined before the entry sat idle `base_ms`: calling early is harmless.
        result = await b.claim_due(base_ms=20, cap_ms=100, jitter=0.0, max_deliveries=5, limit=10)
        claims.append(result)
        return bool(result.claimed or result.missing)

    await eventually(claimed_something, timeout_s=5, what="claim_due to reach the entry")
    assert claims[-1].claimed == []
    assert claims[-1].missing == [entry_id]
    assert not await is_pending(redis, entry_id)
    assert not await redis.hexists(LAST_ERROR_HASH, entry_id)
    assert await redis.hlen(LAST_ERROR_HASH) == 0


async def test_a_redelivery_ack_of_an_entry_no_longer_pending_sends_no_receipt(
    redis: Redis,
) -> None:
    """ack_sent(emailed=False) (the ledger already knew the e-mail) for an entry another
    replica acknowledged first returns False and adds no receipt."""
    streams = Streams(redis, "a")
    entry_id = await add_entry(redis)
    await read_one(streams)
    assert await streams.ack_sent(entry_id, receipt("sent", entry_id), emailed=False) is True
    assert await receipt_kinds(redis) == ["sent"]

    again = await streams.ack_sent(entry_id, receipt("sent", entry_id), emailed=False)
    assert again is False
    assert await receipt_kinds(redis) == ["sent"], "no second receipt for one e-mail"


async def test_an_email_sent_after_its_entry_was_dead_lettered_is_still_reported(
    redis: Redis,
) -> None:
    """ack_sent(emailed=True) for an entry the reaper dead-lettered during the send returns
    False but adds the `sent` receipt after the `dead` one."""
    streams = Streams(redis, "a")
    entry_id = await add_entry(redis)
    await read_one(streams)
    dead_id = await streams.dead_letter(
        entry_id, reason_class="max_deliveries", reason="not delivered", min_deliveries=1
    )
    assert dead_id is not None
    assert await redis.xlen(DEAD_STREAM) == 1
    assert await receipt_kinds(redis) == ["dead"]

    sent = receipt("sent", entry_id, "<m1@acme.example>")
    assert await streams.ack_sent(entry_id, sent, emailed=True) is False
    assert await receipt_kinds(redis) == ["dead", "sent"]
    [_dead, (_sid, fields)] = await redis.xrange(RECEIPTS_STREAM)
    assert fields[b"detail"] == b"<m1@acme.example>"
    assert not await is_pending(redis, entry_id)


async def test_an_email_sent_for_a_pending_entry_acks_it_once_and_clears_its_error(
    redis: Redis,
) -> None:
    """ack_sent(emailed=True) for a pending entry acknowledges it, adds one `sent` receipt
    and deletes the last-error field an earlier failed try left."""
    streams = Streams(redis, "a")
    entry_id = await add_entry(redis)
    await read_one(streams)
    failure = receipt("attempt_failed", entry_id, "451 4.3.0 try later")
    assert await streams.record_failure(entry_id, failure, refund=False) == 1
    assert await redis.hexists(LAST_ERROR_HASH, entry_id)

    assert await streams.ack_sent(entry_id, receipt("sent", entry_id), emailed=True) is True
    assert not await is_pending(redis, entry_id)
    assert await receipt_kinds(redis) == ["attempt_failed", "sent"]
    assert not await redis.hexists(LAST_ERROR_HASH, entry_id)


async def test_trimming_removes_what_every_group_acknowledged_and_keeps_the_rest(
    redis: Redis,
) -> None:
    """With no retention, the reaper's trim drops acknowledged entries at once (whole listpack
    nodes, so at most a node's worth stays) and never a pending or an unread one."""
    streams = Streams(redis, "a")
    ids = [await add_entry(redis) for _ in range(400)]
    await streams.ensure_group()
    await streams.read_new(300, 10)
    assert await redis.xack(EVENTS_STREAM, streams.group, *ids[:250]) == 250
    assert await reap(streams) is not None
    left: Any = await redis.xrange(EVENTS_STREAM)
    kept = {entry_id.decode() for entry_id, _fields in left}
    assert set(ids[250:]) <= kept, "a pending (250-299) or unread (300-399) entry was trimmed"
    assert len(kept) <= 150 + 100, f"{len(kept)} entries left: acknowledged ones stayed"

    assert await reap(streams, retention_ms=3_600_000) == ReapRound([], 0)
    assert await redis.xlen(EVENTS_STREAM) == len(kept), "a retention keeps recent entries"


async def test_claims_and_reaping_on_a_shard_without_its_group_yet_find_nothing(
    redis: Redis,
) -> None:
    """A replica's claimer and reaper may run before its readers made every shard's group (8
    shards at start): nothing to claim, reap or trim, rather than a failed round."""
    streams = Streams(redis, "a", shard=shard(5))

    async def claim() -> ClaimResult:
        return await streams.claim_due(base_ms=1, cap_ms=1, jitter=0.0, max_deliveries=6, limit=10)

    assert await claim() == ClaimResult([], [])
    assert await reap(streams) == ReapRound([], 0)
    await redis.xadd(shard(5).events, {"n": "1"})  # the stream, still without the group
    assert (
        await streams.claim_due(base_ms=1, cap_ms=1, jitter=0.0, max_deliveries=6, limit=10)
    ).claimed == []
    assert await reap(streams) == ReapRound([], 0)


async def test_a_stream_our_group_has_not_seen_yet_is_never_trimmed(redis: Redis) -> None:
    """Events published before any replica made the shard's group (a backlog loaded while no
    notifier ran, a shard just added): the reaper must not take "no group" for "every group
    acknowledged everything" and drop them unread."""
    events = shard(3).events
    for n in range(300):  # three whole listpack nodes: what an approximate XTRIM removes
        await redis.xadd(events, {"n": str(n)})
    await redis.xgroup_create(events, "someone-else", id="$")
    assert await reap(Streams(redis, "a", shard=shard(3))) == ReapRound([], 0)
    assert await redis.xlen(events) == 300


async def test_one_replica_reaps_a_shard_per_round_and_its_owner_may_go_again(
    redis: Redis,
) -> None:
    """reap_round.lua's lock: the replicas that lose a shard's round are refused (None) until
    it expires, the owner is not, and each shard's round has its own lock."""
    first, second = Streams(redis, "a"), Streams(redis, "b")
    await first.ensure_group()
    assert await reap(first) == ReapRound([], 0)
    assert await reap(second) is None, "two replicas reaped the same shard in one round"
    assert await reap(first) == ReapRound([], 0), "the lock's owner was refused its own round"
    other_shard = Streams(redis, "b", shard=shard(2))
    assert await reap(other_shard) == ReapRound([], 0), "shard 0's lock held back shard 2"
    await redis.delete(shard(0).reaper_lock)  # the lock expired
    assert await reap(second) == ReapRound([], 0)


async def test_a_round_lists_the_entries_over_their_budget_and_never_a_held_one(
    redis: Redis,
) -> None:
    """Exhausted: pending and delivered `max deliveries` times. A held entry (waiting for its
    recipient's window) is not failing; an entry read once with a budget of two has tries left."""
    streams = Streams(redis, "a")
    await add_entry(redis)
    over = await read_one(streams)
    await add_entry(redis)
    held = await read_one(streams)
    await redis.zadd(shard(0).held, {held: 10**13})
    found = await reap(streams, max_deliveries=1)
    assert found is not None and found.exhausted == [over]
    assert await is_pending(redis, over), "listing an entry must not settle it"
    await redis.delete(shard(0).reaper_lock)
    assert await reap(streams, max_deliveries=2) == ReapRound([], 0)


async def test_a_round_never_trims_below_another_groups_oldest_pending_entry(
    redis: Redis,
) -> None:
    """The trim keeps what any group still owes: here a second group read 300 entries and
    acknowledged none, while ours acknowledged all of them."""
    streams = Streams(redis, "a")
    ids = [await add_entry(redis) for _ in range(300)]
    await streams.ensure_group()
    await redis.xgroup_create(EVENTS_STREAM, "audit", id="0")
    await redis.xreadgroup("audit", "x", {EVENTS_STREAM: ">"}, count=300)
    await streams.read_new(300, 10)
    assert await redis.xack(EVENTS_STREAM, NOTIFIER_GROUP, *ids) == 300
    assert await reap(streams) == ReapRound([], 0)
    assert await redis.xlen(EVENTS_STREAM) == 300


async def test_one_pipeline_claims_every_shards_due_retries_and_one_shards_failure_is_its_own(
    redis: Redis,
) -> None:
    """claim_due_across (a claimer round on one node): each shard's due entries come back as
    that shard's; a shard without its group yet has nothing to claim, and a shard whose call
    Redis refuses answers its error without costing the others their claims."""
    for index in range(2):
        owner = Streams(redis, "a", shard=shard(index))
        await owner.ensure_group()
        await redis.xadd(shard(index).events, {"n": str(index)})
        assert len(await owner.read_new(10, 10)) == 1
    await redis.set(shard(3).events, "not a stream")  # WRONGTYPE for its claim
    claimers = [Streams(redis, "b", shard=shard(index)) for index in range(4)]
    results = await claim_due_across(
        claimers, base_ms=0, cap_ms=0, jitter=0.0, max_deliveries=6, limit=10
    )
    first, second, without_group, refused = results
    assert isinstance(first, ClaimResult) and [e.shard for e in first.claimed] == [0]
    assert isinstance(second, ClaimResult) and [e.shard for e in second.claimed] == [1]
    assert without_group == ClaimResult([], [])
    assert isinstance(refused, ResponseError) and "WRONGTYPE" in str(refused)
    consumers: Any = await redis.xinfo_consumers(shard(1).events, NOTIFIER_GROUP)
    assert {c["name"].decode(): c["pending"] for c in consumers} == {"a": 0, "b": 1}
