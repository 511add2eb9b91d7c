"""The dead stream bounded by count and age on real Redis and PostgreSQL: the archiver moves
the oldest entries to `notify.dead_letters` and never leaves one in both places or in neither;
`acme dead list/show/replay/purge` read and act on both; entries survive byte-exact."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from acme_cli.admin.actions import Progress, replay
from acme_cli.admin.archive_actions import Acting, replay_archived
from acme_notify.archiver import Archiver
from acme_notify.dead_archive import ArchivedEntry, DeadArchive
from acme_notify.keys import ARCHIVER_LOCK, AUDIT_STREAM
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, shard
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.integration.test_admin_dead import (
    acme,
    admin_env,  # noqa: F401 - a fixture, used through `usefixtures`
    dead_fields,
    seed_dead,
)
from tests.integration.test_dead_layout import POISON, add_legacy, dead_letter_poison, raw_entry

DAY_MS = 86_400_000


def archiver(redis: Redis, archive: DeadArchive, **bounds: Any) -> Archiver:
    settings: dict[str, Any] = {
        "max_entries": 100_000,
        "retention_s": 86_400,
        "archive_retention_s": 90 * 86_400,
    }
    return Archiver(redis, archive, owner="t", batch=3, **(settings | bounds))


async def drain(actor: Archiver, capsys: pytest.CaptureFixture[str] | None = None) -> None:
    """Rounds until one finds nothing more to do (the actor's burst mode); its logs are
    dropped from `capsys`, so a command's output read next is the command's alone."""
    while await actor.archive_round():
        pass
    if capsys is not None:
        capsys.readouterr()


async def stream_ids(redis: Redis) -> list[str]:
    return [entry_id.decode() for entry_id, _fields in await redis.xrange(DEAD_STREAM)]


async def archived_ids(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT dead_id FROM notify.dead_letters ORDER BY dead_at, dead_seq")
    return [row["dead_id"] for row in rows]


async def test_entries_over_the_count_bound_or_too_old_move_and_the_newest_stay(
    redis: Redis, pool: asyncpg.Pool
) -> None:
    """4 entries older than the retention and 8 recent, bound 6: the 4 old and the 2 oldest
    recent ones move, byte-exact, batch by batch; the 6 newest stay; the counter counts 6."""
    old = await seed_dead(redis, 4, start_ms=now_ms() - 2 * DAY_MS)
    recent = await seed_dead(redis, 8)
    raw = {s.dead_id: await raw_entry(redis, DEAD_STREAM, s.dead_id) for s in old + recent}
    registry = CollectorRegistry()
    archived = Counter("archived_total", "test", registry=registry)
    actor = archiver(redis, DeadArchive(pool), max_entries=6)
    actor._archived = archived
    await drain(actor)

    moved = [s.dead_id for s in old + recent[:2]]
    assert await stream_ids(redis) == [s.dead_id for s in recent[2:]]
    assert await archived_ids(pool) == moved
    rows = await DeadArchive(pool).fetch(moved)
    assert all(rows[i].fields == raw[i] for i in moved)
    assert archived._value.get() == 6
    assert not await actor.archive_round()  # nothing left to move


async def test_an_entry_replayed_meanwhile_ends_on_the_events_stream_only(
    redis: Redis, pool: asyncpg.Pool
) -> None:
    """An operator replays an entry after the archiver committed its row and before the XDEL:
    the row is deleted again, so the entry is on the events stream and nowhere else."""
    seeded = await seed_dead(redis, 3, start_ms=now_ms() - 2 * DAY_MS)
    victim = seeded[1].dead_id

    class ReplayedMeanwhile(DeadArchive):
        async def insert(self, entries: Any) -> None:
            await super().insert(entries)
            await replay(
                redis, [victim], cap=3, force=False, who="op", why="", audit_maxlen=1_000,
                progress=Progress(),
            )  # fmt: skip

    await drain(archiver(redis, ReplayedMeanwhile(pool)))
    assert await stream_ids(redis) == []
    assert await archived_ids(pool) == [seeded[0].dead_id, seeded[2].dead_id]
    [(_id, fields)] = await redis.xrange(EVENTS_STREAM)
    assert fields[b"event_id"].decode() == seeded[1].event_id and fields[b"replays"] == b"1"


@pytest.mark.usefixtures("admin_env")
async def test_a_crash_between_the_steps_shows_the_stream_copy_and_the_next_round_finishes(
    redis: Redis, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows committed, entries still in the stream: `dead list` shows each once, from the
    stream; the next round keeps the rows and removes the entries."""
    seeded = await seed_dead(redis, 2, start_ms=now_ms() - 2 * DAY_MS)
    archive = DeadArchive(pool)
    await archive.insert(
        [ArchivedEntry(s.dead_id, await raw_entry(redis, DEAD_STREAM, s.dead_id)) for s in seeded]
    )
    code, out, _ = await acme(capsys, "dead", "list", "--json")
    assert code == 0
    entries = json.loads(out)["entries"]
    assert [(e["dead_id"], e["where"]) for e in entries] == [
        (seeded[1].dead_id, "stream"),
        (seeded[0].dead_id, "stream"),
    ]
    await drain(archiver(redis, archive))
    assert await stream_ids(redis) == [] and len(await archived_ids(pool)) == 2


async def test_an_archiver_that_lost_its_lock_removes_nothing(
    redis: Redis, pool: asyncpg.Pool
) -> None:
    """The lock is the fence: once another replica holds it, the script deletes nothing (the
    rows stay, and a later round finishes the move)."""
    await seed_dead(redis, 2, start_ms=now_ms() - 2 * DAY_MS)
    actor = archiver(redis, DeadArchive(pool))
    assert await actor._take_lock()
    await redis.set(ARCHIVER_LOCK, "another-replica")
    assert await actor.move_batch() == 0
    assert len(await stream_ids(redis)) == 2 and len(await archived_ids(pool)) == 2
    assert not await actor.archive_round()  # not its round
    await redis.delete(ARCHIVER_LOCK)
    await drain(actor)
    assert await stream_ids(redis) == [] and len(await archived_ids(pool)) == 2


@pytest.mark.usefixtures("admin_env")
async def test_list_show_replay_and_purge_read_and_act_on_archived_entries(
    redis: Redis, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 entries, the 3 oldest archived: list merges newest first with `where`, pages across
    the boundary, filters by reason; show finds an archived id; replay and purge act on it
    with an audit record each."""
    reasons = ["smtp_permanent", "invalid_recipient", "smtp_permanent", "poison", "poison"]
    seeded = await seed_dead(redis, 5, reason_for=lambda i: reasons[i])
    await drain(archiver(redis, DeadArchive(pool), max_entries=2), capsys)
    ids = [s.dead_id for s in reversed(seeded)]

    code, out, _ = await acme(capsys, "dead", "list", "--json")
    document = json.loads(out)
    assert code == 0 and (document["total"], document["in_archive"]) == (5, 3)
    assert [(e["dead_id"], e["where"]) for e in document["entries"]] == list(
        zip(ids, ["stream"] * 2 + ["archive"] * 3, strict=True)
    )
    pages, before = [], None
    while True:
        argv = ["--before", before] if before else []
        code, out, _ = await acme(capsys, "dead", "list", "--limit", "2", "--json", *argv)
        document = json.loads(out)
        pages.append([e["dead_id"] for e in document["entries"]])
        if (before := document["next_before"]) is None:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:]]
    code, out, _ = await acme(capsys, "dead", "list", "--reason", "smtp_permanent", "--json")
    assert [e["dead_id"] for e in json.loads(out)["entries"]] == [ids[2], ids[4]]

    code, out, _ = await acme(capsys, "dead", "show", ids[3], "--json")
    document = json.loads(out)
    assert code == 0 and document["entry"]["where"] == "archive"
    assert document["entry"]["event_id"] == seeded[1].event_id and document["archived_at"]
    code, out, _ = await acme(capsys, "dead", "show", ids[3])
    assert "archive (PostgreSQL" in out

    code, out, _ = await acme(capsys, "dead", "replay", ids[3], "--why", "INC-9", "--json")
    [outcome] = json.loads(out)["outcomes"]
    assert code == 0 and (outcome["status"], outcome["replays"]) == ("replayed", 1)
    [(new_id, fields)] = await redis.xrange(EVENTS_STREAM)
    assert new_id.decode() == outcome["new_id"] and fields[b"replays"] == b"1"
    assert fields[b"event_id"].decode() == seeded[1].event_id
    assert ids[3] not in await archived_ids(pool) and len(await stream_ids(redis)) == 2

    code, out, _ = await acme(capsys, "dead", "purge", ids[4], ids[0], "--why", "GDPR", "--json")
    assert code == 0 and json.loads(out)["summary"] == {"purged": 2}
    assert await archived_ids(pool) == [ids[2]] and await stream_ids(redis) == [ids[1]]
    audit = [fields for _id, fields in await redis.xrange(AUDIT_STREAM)]
    assert [a[b"action"] for a in audit] == [b"replay", b"purge", b"purge"]
    assert audit[0][b"why"] == f"INC-9 (archived dead letter {ids[3]})".encode()
    assert audit[1][b"dead_id"].decode() == ids[0] and b"where" not in audit[1]
    assert audit[2][b"dead_id"].decode() == ids[4] and audit[2][b"where"] == b"archive"
    assert audit[2][b"order_id"].decode() == seeded[0].order_id

    code, _, err = await acme(capsys, "dead", "show", ids[4])
    assert code == 5 and "no dead entry" in err


@pytest.mark.usefixtures("admin_env")
async def test_archived_replays_keep_the_cap_and_purge_older_than_reaches_the_archive(
    redis: Redis, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archived entry replayed 3 times already is refused, and stays archived, unless
    --force; `purge --older-than` selects archived entries too."""
    dead_at = now_ms() - 40 * DAY_MS
    fields = dead_fields(
        event_id=str(uuid7()), order_id=str(uuid7()), data=b"{}", dead_at_ms=dead_at, replays=3
    )
    capped = (await redis.xadd(DEAD_STREAM, fields, id=f"{dead_at}-0")).decode()  # type: ignore[arg-type]
    await drain(archiver(redis, DeadArchive(pool)), capsys)
    assert await archived_ids(pool) == [capped]

    code, out, err = await acme(capsys, "dead", "replay", capped, "--json")
    [outcome] = json.loads(out)["outcomes"]
    assert code == 1 and (outcome["status"], outcome["replays"]) == ("capped", 3)
    assert "--force" in err and await archived_ids(pool) == [capped]
    assert await stream_ids(redis) == [] and await redis.xlen(EVENTS_STREAM) == 0

    code, out, _ = await acme(capsys, "dead", "purge", "--older-than", "30d", "--dry-run", "--json")
    assert [o["dead_id"] for o in json.loads(out)["outcomes"]] == [capped]
    code, out, _ = await acme(capsys, "dead", "replay", capped, "--force", "--json")
    [outcome] = json.loads(out)["outcomes"]
    assert code == 0 and (outcome["status"], outcome["replays"]) == ("replayed", 4)
    assert await archived_ids(pool) == []


async def test_a_poison_entry_survives_archive_and_replay_byte_exact(
    redis: Redis, pool: asyncpg.Pool
) -> None:
    """Reserved names, the escape prefix, bytes that are not UTF-8 (in a name too), and a
    layout-1 entry that repeats a name: archived and replayed, the events stream gets back
    exactly the original fields with replays + 1."""
    poison = POISON | {b"\xc3\x28name": b"\x80\x81"}
    _entry_id, first = await dead_letter_poison(redis, poison)
    legacy = await add_legacy(redis, b"reason_class", b"forged", b"\xff", b"\xfe")
    flat = {i: await raw_entry(redis, DEAD_STREAM, i) for i in (first, legacy)}
    archive = DeadArchive(pool)
    await drain(archiver(redis, archive, max_entries=0))
    assert await stream_ids(redis) == []
    rows = await archive.fetch([first, legacy])
    assert {i: rows[i].fields for i in rows} == flat

    await redis.delete(EVENTS_STREAM)
    progress = await replay_archived(
        redis, archive, [first, legacy], cap=3, force=False, acting=Acting("t", "", 100),
        progress=Progress(),
    )  # fmt: skip
    assert [o.status for o in progress.outcomes] == ["replayed", "replayed"]
    back = [await raw_entry(redis, EVENTS_STREAM, o.new_id or "") for o in progress.outcomes]
    assert dict(zip(back[0][0::2], back[0][1::2], strict=True)) == poison | {b"replays": b"1"}
    assert back[1] == [b"reason_class", b"forged", b"\xff", b"\xfe", b"replays", b"1"]
    assert await archive.fetch([first, legacy]) == {} and await stream_ids(redis) == []


async def test_archive_retention_deletes_old_rows_in_batches(
    redis: Redis, pool: asyncpg.Pool
) -> None:
    """Rows dead longer ago than the archive retention are deleted (and counted); younger
    ones stay."""
    old = await seed_dead(redis, 3, start_ms=now_ms() - 10 * DAY_MS)
    young = await seed_dead(redis, 2, start_ms=now_ms() - 2 * DAY_MS)
    expired = Counter("expired_total", "test", registry=CollectorRegistry())
    actor = archiver(redis, DeadArchive(pool), archive_retention_s=5 * 86_400)
    actor._expired = expired
    await drain(actor)
    assert await stream_ids(redis) == []
    assert await archived_ids(pool) == [s.dead_id for s in young]
    assert expired._value.get() == len(old)


async def test_only_shard_0s_archiver_expires_the_archive_all_shards_share(
    redis: Redis, pool: asyncpg.Pool
) -> None:
    """The archive is one table: a replica's archivers of shards 1..N-1 move their own dead
    letters but leave expiry to shard 0's, so N shards do not run the same DELETE N times."""
    old = await seed_dead(redis, 3, start_ms=now_ms() - 10 * DAY_MS)
    young = await seed_dead(redis, 2, start_ms=now_ms() - 2 * DAY_MS)
    archive = DeadArchive(pool)
    await drain(archiver(redis, archive))  # moved, kept: 90 days of archive retention
    assert len(await archived_ids(pool)) == len(old) + len(young)
    await drain(archiver(redis, archive, archive_retention_s=5 * 86_400, on=shard(3)))
    assert len(await archived_ids(pool)) == len(old) + len(young), "shard 3 expired rows"
    await redis.delete(ARCHIVER_LOCK)  # the first archiver's round is over
    await drain(archiver(redis, archive, archive_retention_s=5 * 86_400))
    assert await archived_ids(pool) == [s.dead_id for s in young]
