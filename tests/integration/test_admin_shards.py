"""The admin commands on a deployment of three shards (ACME_STREAM_SHARDS=3), on real Redis and
PostgreSQL: dead letters of every shard listed together in time order under their qualified
names (`2/<ms>-<seq>`), with the archive, page by page; replay and purge acting on the named
entry's own shard (its events and audit streams); stats per shard; trace finding the event's
shard; and a malformed shard prefix refused as a usage error."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from acme_cli.admin.edge import stream_id
from acme_cli.admin.errors import UsageError
from acme_notify.archiver import Archiver
from acme_notify.dead_archive import ArchivedEntry, DeadArchive
from acme_notify.streams import Streams
from acme_orders.settings import OrdersSettings
from acme_runtime.channels import NOTIFIER_GROUP, RECEIPTS_GROUP, Shard, qualify, shard
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.harness import api_client, eventually
from tests.integration.test_admin_dead import (
    CONTENT_REJECTED,
    acme,
    admin_env,  # noqa: F401 - a fixture, used through `usefixtures`
    dead_fields,
    envelope,
)
from tests.integration.test_api import ORDER

SHARDS = 3


@pytest.fixture
def three_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin commands configured as a deployment of three shards."""
    monkeypatch.setenv("ACME_STREAM_SHARDS", str(SHARDS))


pytestmark = pytest.mark.usefixtures("admin_env", "three_shards")


def fresh_dead_fields(dead_at_ms: int, reason_class: str = "smtp_permanent") -> dict[str, Any]:
    """A dead letter's fields for a new order and event."""
    event_id, order_id = str(uuid7()), str(uuid7())
    return dead_fields(
        event_id=event_id,
        order_id=order_id,
        data=envelope(event_id, order_id),
        dead_at_ms=dead_at_ms,
        reason_class=reason_class,
    )


async def seed_on(redis: Redis, on: Shard, ms: int, *, reason_class: str = "smtp_permanent") -> str:
    """A dead letter on shard `on`'s dead stream with the id `<ms>-0`; its qualified name."""
    fields = fresh_dead_fields(ms, reason_class)
    await redis.xadd(on.dead, fields, id=f"{ms}-0")  # type: ignore[arg-type]
    return qualify(on.index, f"{ms}-0")


async def seed_interleaved(redis: Redis) -> list[str]:
    """Nine dead letters, three per shard, dead in turn on shard 0, 1, 2, 0, ...; the last
    three at the very same moment on all three shards (so the same stream id on each).
    Returns their names newest first: time, then shard."""
    base = now_ms() - 60_000
    names = [await seed_on(redis, shard(i % SHARDS), base + i) for i in range(6)]
    names += [await seed_on(redis, shard(i), base + 6) for i in range(SHARDS)]
    return sorted(names, key=_order, reverse=True)


def _order(name: str) -> tuple[int, int, int]:
    index, _slash, entry_id = name.rpartition("/")
    ms, _dash, seq = entry_id.partition("-")
    return int(ms), int(seq), int(index or 0)


async def dead_letter_for_real(redis: Redis, on: Shard, order_id: str) -> tuple[str, str]:
    """An event published on shard `on`, read by a notifier and dead-lettered by
    dead_letter.lua there; (its qualified dead name, its event id)."""
    event_id = str(uuid7())
    streams = Streams(redis, "n1", shard=on)
    await streams.ensure_group()
    await redis.xadd(
        on.events,
        {
            "event_id": event_id,
            "order_id": order_id,
            "type": "order.confirmation_requested",
            "v": "1",
            "data": envelope(event_id, order_id),
        },
    )
    [entry] = await streams.read_new(count=1, block_ms=100)
    dead_id = await streams.dead_letter(
        entry.entry_id, reason_class="smtp_permanent", reason=CONTENT_REJECTED
    )
    assert dead_id is not None
    return qualify(on.index, dead_id), event_id


async def list_pages(capsys: pytest.CaptureFixture[str], limit: int) -> list[list[str]]:
    """`acme dead list --limit LIMIT` page after page, following `next_before`."""
    pages: list[list[str]] = []
    before: str | None = None
    while True:
        argv = ["--before", before] if before else []
        code, out, err = await acme(capsys, "dead", "list", "--limit", str(limit), "--json", *argv)
        assert code == 0, err
        document = json.loads(out)
        pages.append([e["dead_id"] for e in document["entries"]])
        if (before := document["next_before"]) is None:
            return pages
        assert len(pages) < 20, pages


async def test_dead_list_merges_every_shards_dead_letters_newest_first_with_qualified_ids(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters on all three shards come out as one list, newest first across shards
    (same moment: higher shard first), shard 0's ids bare and the others' `<shard>/<id>`; the
    total counts every shard; pages of any size, each cursor a qualified id, list each entry
    exactly once, ties at a page boundary included."""
    names = await seed_interleaved(redis)
    assert names[:3] == [f"2/{names[2]}", f"1/{names[2]}", names[2]]  # the three-way tie
    code, out, _ = await acme(capsys, "dead", "list", "--json")
    document = json.loads(out)
    assert code == 0 and document["total"] == document["in_stream"] == 9
    assert [e["dead_id"] for e in document["entries"]] == names
    assert document["next_before"] is None
    for size in (1, 2, 4):
        pages = await list_pages(capsys, size)
        assert [name for page in pages for name in page] == names, size
        assert all(len(page) == size for page in pages[:-1]), (size, pages)

    code, out, _ = await acme(capsys, "dead", "list", "--before", names[1], "--json")
    assert [e["dead_id"] for e in json.loads(out)["entries"]] == names[2:]
    code, out, _ = await acme(capsys, "dead", "list")
    assert code == 0 and f"2/{names[2]}" in out and f"1/{names[2]}" in out


async def test_dead_list_filters_by_reason_across_shards(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reason scans every shard's dead stream and merges the matches in time order."""
    base = now_ms() - 60_000
    wanted = []
    for i in range(9):
        reason = "invalid_recipient" if i % 2 else "smtp_permanent"
        name = await seed_on(redis, shard(i % SHARDS), base + i, reason_class=reason)
        if i % 2:
            wanted.append(name)
    argv = ["dead", "list", "--reason", "invalid_recipient", "--json", "--limit", "3"]
    code, out, _ = await acme(capsys, *argv)
    document = json.loads(out)
    assert code == 0 and [e["dead_id"] for e in document["entries"]] == wanted[::-1][:3]
    code, out, _ = await acme(capsys, *argv, "--before", document["next_before"])
    assert [e["dead_id"] for e in json.loads(out)["entries"]] == wanted[::-1][3:]


async def test_replay_of_a_shard_2_entry_goes_back_on_shard_2_and_is_audited_there(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """`acme dead replay 2/<id>` moves the entry from shard 2's dead stream to shard 2's
    events stream (`replays` 1) and writes the audit record on shard 2's audit stream; no
    other shard's stream changes. The bare id names shard 0's entry: not found there."""
    order_id = str(uuid7())
    dead_name, event_id = await dead_letter_for_real(redis, shard(2), order_id)
    capsys.readouterr()  # the group's creation, logged
    assert dead_name.startswith("2/")
    bare = dead_name.removeprefix("2/")

    code, out, _ = await acme(capsys, "dead", "show", dead_name, "--json")
    assert code == 0 and json.loads(out)["entry"]["dead_id"] == dead_name
    assert json.loads(out)["entry"]["event_id"] == event_id
    code, out, err = await acme(capsys, "dead", "replay", bare)
    assert (code, out) == (5, "") and f"no dead entry {bare}" in err

    code, out, err = await acme(capsys, "dead", "replay", dead_name, "--why", "shard 2", "--json")
    assert code == 0, err
    [outcome] = json.loads(out)["outcomes"]
    assert (outcome["dead_id"], outcome["status"], outcome["order_id"]) == (
        dead_name,
        "replayed",
        order_id,
    )
    assert outcome["new_id"].startswith("2/")
    new_id = outcome["new_id"].removeprefix("2/")

    assert await redis.xlen(shard(2).dead) == 0
    replayed: Any = await redis.xrange(shard(2).events, new_id, new_id)
    assert replayed[0][1][b"event_id"] == event_id.encode() and replayed[0][1][b"replays"] == b"1"
    [(_audit_id, audit)] = await redis.xrange(shard(2).audit)
    assert audit[b"action"] == b"replay" and audit[b"dead_id"] == bare.encode()
    assert audit[b"new_id"] == new_id.encode() and audit[b"who"] == b"ops-tester@host-1"
    for other in (shard(0), shard(1)):
        assert await redis.exists(other.events, other.dead, other.audit) == 0, other

    # It dies again; its dead letter's audit trail reads back under the operator's names.
    streams = Streams(redis, "n1", shard=shard(2))
    [entry] = await streams.read_new(count=1, block_ms=100)
    again = await streams.dead_letter(entry.entry_id, reason_class="poison", reason="again")
    assert entry.entry_id == new_id and again is not None
    capsys.readouterr()
    code, out, _ = await acme(capsys, "dead", "show", f"2/{again}", "--json")
    audit_records = json.loads(out)["audit"]
    assert [(r["action"], r["dead_id"], r["new_id"]) for r in audit_records] == [
        ("replay", dead_name, outcome["new_id"])
    ]
    assert audit_records[0]["audit_id"].startswith("2/")


async def test_purge_of_a_shard_1_entry_deletes_it_there_and_is_audited_there(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """`acme dead purge 1/<id>` deletes only shard 1's entry (shard 0's entry of the same
    stream id stays) with an audit record on shard 1's audit stream; --older-than purges on
    every shard."""
    ms = now_ms() - 120_000
    on_1, on_0 = await seed_on(redis, shard(1), ms), await seed_on(redis, shard(0), ms)
    assert (on_1, on_0) == (f"1/{ms}-0", f"{ms}-0")
    code, out, err = await acme(capsys, "dead", "purge", on_1, "--why", "gdpr", "--json")
    assert code == 0, err
    assert [(o["dead_id"], o["status"]) for o in json.loads(out)["outcomes"]] == [(on_1, "purged")]
    assert await redis.xlen(shard(1).dead) == 0 and await redis.xlen(shard(0).dead) == 1
    [(_id, audit)] = await redis.xrange(shard(1).audit)
    assert (audit[b"action"], audit[b"dead_id"], audit[b"why"]) == (
        b"purge",
        f"{ms}-0".encode(),
        b"gdpr",
    )
    assert await redis.exists(shard(0).audit) == 0

    names = [await seed_on(redis, shard(i), ms + 1 + i) for i in range(SHARDS)]
    code, out, err = await acme(capsys, "dead", "purge", "--older-than", "1m", "--yes", "--json")
    assert code == 0, err
    purged = [o["dead_id"] for o in json.loads(out)["outcomes"]]
    assert purged == [on_0, *names]  # oldest first, across shards
    for i in range(SHARDS):
        assert await redis.xlen(shard(i).dead) == 0
        assert await redis.xlen(shard(i).audit) == (2, 2, 1)[i]


async def test_archived_dead_letters_of_every_shard_are_listed_replayed_and_purged_there(
    redis: Redis, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each shard's archiver moves all but its newest entry to PostgreSQL under qualified
    names; the list merges streams and archive in time order, page by page, even across the
    tie of one moment on all three shards in the archive; an archived shard-2 entry replays
    onto shard 2's events stream, an archived shard-1 entry purges with its audit on shard 1."""
    names = await seed_interleaved(redis)
    for i in range(SHARDS):
        actor = Archiver(
            redis,
            DeadArchive(pool),
            owner="t",
            batch=3,
            max_entries=1,
            retention_s=86_400,
            archive_retention_s=86_400,
            on=shard(i),
        )
        while await actor.archive_round():
            pass
    capsys.readouterr()
    archived = {
        row["dead_id"] for row in await pool.fetch("SELECT dead_id FROM notify.dead_letters")
    }
    assert archived == set(names[3:])  # the tie at the top stays, one per shard

    code, out, _ = await acme(capsys, "dead", "list", "--json")
    document = json.loads(out)
    assert (document["total"], document["in_archive"]) == (9, 6)
    assert [(e["dead_id"], e["where"]) for e in document["entries"]] == [
        (name, "stream" if i < 3 else "archive") for i, name in enumerate(names)
    ]
    for size in (1, 2, 4):
        pages = await list_pages(capsys, size)
        assert [name for page in pages for name in page] == names, size

    # The archive's own tie: one moment on all three shards, and a page boundary inside it.
    tie_ms = _order(names[3])[0] - 100
    ties = [qualify(i, f"{tie_ms}-0") for i in range(SHARDS)]
    await DeadArchive(pool).insert([archived_entry(name, tie_ms) for name in ties])
    everything = sorted([*names, *ties], key=_order, reverse=True)
    for size in (1, 2, 4, 5):
        pages = await list_pages(capsys, size)
        assert [name for page in pages for name in page] == everything, size

    shard_2 = next(n for n in names[3:] if n.startswith("2/"))
    code, out, err = await acme(capsys, "dead", "replay", shard_2, "--json")
    assert code == 0, err
    [outcome] = json.loads(out)["outcomes"]
    assert outcome["status"] == "replayed" and outcome["new_id"].startswith("2/")
    new_id = outcome["new_id"].removeprefix("2/")
    assert await redis.xrange(shard(2).events, new_id, new_id)
    assert await redis.exists(shard(0).events, shard(1).events) == 0
    [(_id, audit)] = await redis.xrange(shard(2).audit)
    assert audit[b"action"] == b"replay"

    shard_1 = next(n for n in names[3:] if n.startswith("1/"))
    code, out, err = await acme(capsys, "dead", "purge", shard_1, "--json")
    assert code == 0, err
    [(_id, audit)] = await redis.xrange(shard(1).audit)
    assert audit[b"action"] == b"purge" and audit[b"where"] == b"archive"
    assert audit[b"dead_id"] == shard_1.removeprefix("1/").encode()
    left = {row["dead_id"] for row in await pool.fetch("SELECT dead_id FROM notify.dead_letters")}
    assert shard_1 not in left and shard_2 not in left


def archived_entry(name: str, dead_at_ms: int) -> ArchivedEntry:
    """A dead letter as the archiver stores it, named `name`."""
    fields = fresh_dead_fields(dead_at_ms)
    flat = [
        part if isinstance(part, bytes) else part.encode() for kv in fields.items() for part in kv
    ]
    return ArchivedEntry(name, flat)


async def seed_shard_streams(redis: Redis) -> None:
    """Shard i's events stream: 2 + 3i entries, its notifier group has read 1 + i of them
    (`n1`, all pending); shard i's receipts stream: i entries its group has not read; shard i's
    dead stream: i entries."""
    for i in range(SHARDS):
        on = shard(i)
        await redis.xgroup_create(on.events, NOTIFIER_GROUP, id="0", mkstream=True)
        for n in range(2 + 3 * i):
            await redis.xadd(on.events, {"n": str(n)})
        await redis.xreadgroup(NOTIFIER_GROUP, "n1", {on.events: ">"}, count=1 + i)
        await redis.xgroup_create(on.receipts, RECEIPTS_GROUP, id="0", mkstream=True)
        for n in range(i):
            await redis.xadd(on.receipts, {"n": str(n)})
        for n in range(i):
            await seed_on(redis, on, now_ms() - 10_000 + n)


async def test_stats_shows_each_shards_lag_pending_and_dead_and_their_total(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: a row per shard (length, lag, pending, oldest pending and unread ages, dead,
    receipts lag) and the total; every shard's two streams; dead letters of all shards. The
    table shows one row per shard and the total."""
    await seed_shard_streams(redis)
    code, out, err = await acme(capsys, "stats", "--json")
    assert code == 0, err
    snapshot = json.loads(out)
    rows = {row["shard"]: row for row in snapshot["shards"]}
    assert sorted(rows) == [0, 1, 2]
    for i, row in rows.items():
        assert (row["length"], row["lag"], row["pending"], row["dead"]) == (
            2 + 3 * i,
            1 + 2 * i,
            1 + i,
            i,
        ), row
        assert row["receipts_lag"] == i and row["lag_capped"] is False
        assert 0 <= row["oldest_pending_age_s"] < 60 and 0 <= row["oldest_unread_age_s"] < 60
    total = snapshot["total"]
    assert total["shard"] is None
    assert (total["length"], total["lag"], total["pending"], total["dead"]) == (15, 9, 6, 3)
    assert total["receipts_lag"] == 3
    assert [s["stream"] for s in snapshot["streams"]] == [
        name for i in range(SHARDS) for name in (shard(i).events, shard(i).receipts)
    ]
    assert snapshot["dead"]["length"] == 3

    code, out, _ = await acme(capsys, "stats")
    assert code == 0 and "Shards at" in out and "Streams at" not in out
    lines = out.splitlines()
    for i in range(SHARDS):
        [line] = [ln for ln in lines if ln.strip("│ ").startswith(f"{i} ")]
        assert str(1 + 2 * i) in line
    assert any(ln.strip("│ ").startswith("total") and " 15 " in ln for ln in lines)
    assert "{acme:2}:events" in out  # the consumers' table names each shard's stream


async def test_trace_shows_the_pending_state_from_the_events_shard(
    redis: Redis,
    pool: asyncpg.Pool,
    orders_settings: OrdersSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An order published on a shard other than 0 (by the API with three shards), read by a
    notifier and held over its recipient's cap: trace shows the entry pending and held on
    that shard, under its qualified name, found from the timeline's `shard`; and still found,
    by looking on every shard for the order's entry of that id, once neither the timeline
    nor the outbox names it."""
    settings = msgspec.structs.replace(orders_settings, stream_shards=SHARDS)
    order_id, index = None, 0
    async with api_client(settings) as api:
        client: AsyncTestClient[Any] = api
        for _ in range(30):
            candidate = (await client.post("/orders", json=ORDER)).json()["id"]

            async def published(candidate: str = candidate) -> bool:
                shard_of: int | None = await pool.fetchval(
                    "SELECT shard FROM outbox WHERE order_id = $1", uuid.UUID(candidate)
                )
                return shard_of is not None

            await eventually(published, what="the fast path to publish the order")
            index = await pool.fetchval(
                "SELECT shard FROM outbox WHERE order_id = $1", uuid.UUID(candidate)
            )
            if index != 0:
                order_id = candidate
                break
    assert order_id is not None, "thirty orders all on shard 0"
    capsys.readouterr()  # the API's logs
    on = shard(index)
    [(entry_id, _fields)] = await redis.xrange(on.events)
    stream_entry = entry_id.decode()
    await redis.xgroup_create(on.events, NOTIFIER_GROUP, id="0")
    await redis.xreadgroup(NOTIFIER_GROUP, "n7", {on.events: ">"}, count=1)
    await redis.zadd(on.held, {stream_entry: now_ms() + 3_600_000})

    async def traced() -> dict[str, Any]:
        code, out, err = await acme(capsys, "trace", order_id, "--json")
        assert code == 0, err
        document: dict[str, Any] = json.loads(out)
        return document

    trace = await traced()
    published_step = next(s for s in trace["steps"] if s["kind"] == "published")
    assert published_step["detail"]["shard"] == index
    [entry] = trace["stream_entries"]
    assert entry["stream_id"] == f"{index}/{stream_entry}" and entry["shard"] == index
    assert (entry["state"], entry["consumer"], entry["deliveries"]) == ("pending", "n7", 1)
    assert entry["held_until"] is not None

    await pool.execute("UPDATE order_timeline SET detail = detail - 'shard'")
    await pool.execute("UPDATE outbox SET shard = NULL")
    # Shard 0, looked at first, holds another order's entry of the very same stream id.
    await redis.delete(shard(0).events)
    await redis.xadd(shard(0).events, {"order_id": str(uuid7())}, id=stream_entry)
    [entry] = (await traced())["stream_entries"]
    assert entry["stream_id"] == f"{index}/{stream_entry}" and entry["state"] == "pending"
    code, out, _ = await acme(capsys, "trace", order_id)
    assert code == 0 and f"stream entry {index}/{stream_entry}: pending at n7" in out


@pytest.mark.parametrize(
    "argv",
    [
        ("dead", "show", "x/1714557600000-0"),
        ("dead", "show", "256/1714557600000-0"),
        ("dead", "replay", "/1714557600000-0"),
        ("dead", "purge", "1/2/1714557600000-0"),
        ("dead", "list", "--before", "two/1714557600000-0"),
    ],
)
async def test_a_malformed_shard_prefix_is_a_usage_error_naming_the_shard(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """Exit code 2, one line saying what is before '/' is not a shard, before any connection."""
    code, out, err = await acme(capsys, *argv)
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "is not a shard (expected a number 0..255" in err, err


def test_a_dead_id_parses_with_or_without_its_shard() -> None:
    """`<ms>-<seq>` is shard 0's; `<shard>/<ms>-<seq>` another's; `0/` is dropped (the name
    `acme dead list` shows); a bad shard or a bad id each say which part is wrong."""
    assert stream_id("1714557600000-3") == "1714557600000-3"
    assert stream_id(" 2/1714557600000-3 ") == "2/1714557600000-3"
    assert stream_id("0/1714557600000-3") == "1714557600000-3"
    assert stream_id("255/1-0") == "255/1-0"
    for bad in ("x/1-0", "256/1-0", "/1-0", "1/2/3-0", "-1/1-0"):
        with pytest.raises(UsageError, match="is not a shard"):
            stream_id(bad)
    for bad in ("2/1714557600000", "2/abc-1", "2/"):
        with pytest.raises(UsageError, match="not a stream id"):
            stream_id(bad)
