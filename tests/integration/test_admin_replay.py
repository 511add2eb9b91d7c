"""`acme dead replay` on real Redis: entries go back atomically with an audit record, the cap
holds across die-and-replay rounds, nothing changes without confirmation, and an interrupted
run leaves every entry in exactly one of the two streams."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter

import pytest
from redis.asyncio import Redis

from acme_cli.admin.actions import Progress, replay
from acme_cli.admin.commands_replay import dead_replay
from acme_cli.admin.render import Output
from acme_cli.admin.settings import AdminSettings
from acme_notify.keys import AUDIT_STREAM
from acme_notify.streams import Streams
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.harness import eventually
from tests.integration.test_admin_dead import (
    CONTENT_REJECTED,
    acme,
    admin_env,  # noqa: F401 - a fixture, used through `usefixtures`
    dead_letter_for_real,
    envelope,
    seed_dead,
)

pytestmark = pytest.mark.usefixtures("admin_env")


def text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


async def stream_sizes(redis: Redis) -> tuple[int, int, int]:
    """(dead, events, audit) lengths."""
    sizes = [int(await redis.xlen(key)) for key in (DEAD_STREAM, EVENTS_STREAM, AUDIT_STREAM)]
    return sizes[0], sizes[1], sizes[2]


async def test_replay_moves_entries_back_with_an_audit_record_each(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replayed entries are new events-stream entries with the original fields and replays=1,
    gone from the dead stream, each with an audit record of who, when, why and where."""
    seeded = await seed_dead(redis, 3)
    [(_id, dead_fields)] = await redis.xrange(DEAD_STREAM, seeded[0].dead_id, seeded[0].dead_id)
    before = now_ms()
    code, out, _ = await acme(
        capsys, "dead", "replay", seeded[0].dead_id, seeded[2].dead_id, "--why", "INC-7", "--json"
    )
    assert code == 0
    document = json.loads(out)
    assert document["summary"] == {"replayed": 2} and document["dry_run"] is False
    assert await stream_sizes(redis) == (1, 2, 2)

    events = await redis.xrange(EVENTS_STREAM)
    first = text(events[0][1])
    assert list(first) == ["event_id", "order_id", "type", "v", "data", "replays"]
    assert first["replays"] == "1" and first["event_id"] == seeded[0].event_id
    assert events[0][1][b"data"] == dead_fields[b"data"]

    audit = [text(fields) for _id, fields in await redis.xrange(AUDIT_STREAM)]
    outcomes = {o["dead_id"]: o for o in document["outcomes"]}
    for record, seed in zip(audit, (seeded[0], seeded[2]), strict=True):
        assert record["action"] == "replay" and record["dead_id"] == seed.dead_id
        assert record["who"] == "ops-tester@host-1" and record["why"] == "INC-7"
        assert record["order_id"] == seed.order_id and record["event_id"] == seed.event_id
        assert record["new_id"] == outcomes[seed.dead_id]["new_id"]
        assert record["forced"] == "0" and int(record["at_ms"]) >= before
    assert {e[0].decode() for e in events} == {o["new_id"] for o in document["outcomes"]}


async def test_replay_is_refused_past_the_cap_unless_forced(
    redis: Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a cap of 1: an event that died again after a replay is refused (exit 1, left in
    the dead stream, no audit record); --force replays it and says so in the audit trail."""
    monkeypatch.setenv("ACME_REPLAY_MAX", "1")
    event_id, order_id = str(uuid7()), str(uuid7())
    original = {"event_id": event_id, "order_id": order_id, "v": "1"}
    dead_id = await dead_letter_for_real(
        redis, {**original, "data": envelope(event_id, order_id)}, CONTENT_REJECTED
    )
    assert (await acme(capsys, "dead", "replay", dead_id))[0] == 0

    # The notifier reads the replayed entry and it dies again: dead_letter.lua keeps `replays`.
    [(_s, [(entry_id, _f)])] = await redis.xreadgroup(
        NOTIFIER_GROUP, "n2", {EVENTS_STREAM: ">"}, count=1
    )
    again = await Streams(redis, "n2").dead_letter(
        entry_id.decode(), reason_class="smtp_permanent", reason=CONTENT_REJECTED
    )
    assert again is not None
    code, out, err = await acme(capsys, "dead", "replay", again, "--json")
    assert code == 1
    [outcome] = json.loads(out)["outcomes"]
    assert outcome["status"] == "capped" and outcome["replays"] == 1
    assert "--force" in err
    assert await redis.xlen(DEAD_STREAM) == 1 and await redis.xlen(AUDIT_STREAM) == 1

    code, out, _ = await acme(capsys, "dead", "replay", again, "--force", "--json")
    assert code == 0 and json.loads(out)["outcomes"][0]["replays"] == 2
    [*_, (_id, last)] = await redis.xrange(AUDIT_STREAM)
    assert last[b"forced"] == b"1" and last[b"replays"] == b"2"
    assert await redis.xlen(DEAD_STREAM) == 0


async def test_dry_run_and_an_unconfirmed_batch_change_nothing(
    redis: Redis, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """--dry-run shows the plan; more than a few entries without --yes and without a terminal
    to answer is refused; a yes at the prompt goes ahead."""
    await seed_dead(redis, 5)
    code, out, _ = await acme(capsys, "dead", "replay", "--all", "--dry-run", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["dry_run"] is True and document["summary"] == {"would_replay": 5}
    assert await stream_sizes(redis) == (5, 0, 0)

    code, out, err = await acme(capsys, "dead", "replay", "--all")
    assert code == 1 and "--yes" in err and "nothing was changed" in err
    assert await stream_sizes(redis) == (5, 0, 0)

    questions: list[str] = []

    def answer_yes(question: str) -> bool:
        questions.append(question)
        return True

    settings = AdminSettings.from_env({"ACME_REDIS_URL": redis_url, "ACME_OPERATOR": "me"})
    code = await dead_replay(
        settings,
        Output(as_json=True),
        ids=[],
        reasons=(),
        since_ms=None,
        dry_run=False,
        yes=False,
        force=False,
        why="",
        ask=answer_yes,
        progress=Progress(),
    )
    assert code == 0 and questions == ["Replay 5 dead entries?"]
    assert await stream_sizes(redis) == (0, 5, 5)


async def test_replay_by_reason_and_time_takes_only_those(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reason with --since replays the matching entries of the window, oldest first."""
    hour_ago = now_ms() - 3_600_000
    old = await seed_dead(redis, 2, start_ms=hour_ago)
    recent = await seed_dead(
        redis, 4, reason_for=lambda i: "invalid_recipient" if i == 1 else "smtp_permanent"
    )
    code, out, _ = await acme(
        capsys, "dead", "replay", "--reason", "smtp_permanent", "--since", "10m", "--yes", "--json"
    )
    assert code == 0
    replayed = [o["dead_id"] for o in json.loads(out)["outcomes"]]
    assert replayed == [recent[i].dead_id for i in (0, 2, 3)]
    left = {e[0].decode() for e in await redis.xrange(DEAD_STREAM)}
    assert left == {old[0].dead_id, old[1].dead_id, recent[1].dead_id}


async def test_unknown_or_malformed_ids_change_nothing(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """One unknown id among good ones: exit 5, nothing replayed; malformed input: exit 2."""
    [seed] = await seed_dead(redis, 1)
    code, _, err = await acme(capsys, "dead", "replay", seed.dead_id, "42-0", "--yes")
    assert code == 5 and err.strip() == "acme: no dead entry 42-0; nothing was changed"
    for argv in (["not-an-id"], [], ["--all", seed.dead_id], [seed.dead_id, "--since", "1h"]):
        code, _, err = await acme(capsys, "dead", "replay", *argv)
        assert code == 2 and err.startswith("acme: ") and len(err.strip().splitlines()) == 1
    assert await stream_sizes(redis) == (1, 0, 0)


async def read_until(stream: asyncio.StreamReader, needle: bytes) -> bytes:
    """What `stream` gives, up to and including the line holding `needle`."""
    read = b""
    while needle not in read:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"{needle!r} never came; the stream ended after {read!r}")
        read += line
    return read


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
async def test_interrupted_replay_leaves_each_entry_in_exactly_one_stream(
    redis: Redis, redis_url: str, sig: signal.Signals
) -> None:
    """`replay --all` killed, or stopped with Ctrl-C, midway: every event is in the events
    stream or the dead stream, exactly once, and every move has its audit record. Ctrl-C ends
    the run between two pages, exit code 1, saying how far it got."""
    seeded = await seed_dead(redis, 10_000, one_envelope=True)
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "acme_cli.main", "dead", "replay", "--all", "--yes"],
        env={**os.environ, "ACME_REDIS_URL": redis_url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    noted = b""
    try:

        async def first_page_replayed() -> bool:
            return bool(await redis.xlen(EVENTS_STREAM))

        # The first page lands within a second or so; the run has a hundred pages.
        await eventually(first_page_replayed, timeout_s=30, what="the first page to be replayed")
        # Freeze writes: the signal surely lands mid-way, with a page of scripts in flight.
        await redis.client_pause(10_000, all=False)
        process.send_signal(sig)
        # Only then let the page in flight complete: once the process is gone, or once it
        # says (on stderr, as it sets its stop event) that it will stop after that page.
        if sig == signal.SIGKILL:
            await asyncio.wait_for(process.wait(), timeout=10)
        else:
            noted = await asyncio.wait_for(
                read_until(process.stderr, b"acme: stopping after"), timeout=10
            )
    finally:
        await redis.client_unpause()
        _, rest = await asyncio.wait_for(process.communicate(), timeout=30)
    stderr = noted + rest
    # One MULTI/EXEC snapshot: after a SIGKILL, Redis may still run scripts the dead client
    # had already sent, and separate reads could straddle one of them.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xrange(EVENTS_STREAM).xrange(DEAD_STREAM).xlen(AUDIT_STREAM)
        replayed, still_dead, audit = await pipe.execute()
    events, dead = len(replayed), len(still_dead)
    assert dead > 0 and events > 0, "the interruption came mid-way"
    assert audit == events
    everywhere = Counter(fields[b"event_id"].decode() for _id, fields in replayed + still_dead)
    assert set(everywhere) == {s.event_id for s in seeded}
    assert set(everywhere.values()) == {1}
    if sig == signal.SIGINT:
        assert process.returncode == 1
        assert f"stopped on request: {events} replayed, {dead} not touched".encode() in stderr


async def test_replay_script_reads_the_layout_before_and_refuses_what_it_cannot_replay(
    redis: Redis,
) -> None:
    """replay_dead.lua on layout-1 entries (acme_runtime.deadletter_layout): a poison entry
    whose own fields reuse dead-letter names goes back with exactly its own fields; an entry
    with no original fields, or in neither layout, is refused and left in place."""
    meta = {
        "original_id": "1-0",
        "reason_class": "poison",
        "reason": "undecodable envelope",
        "last_error": "",
        "deliveries": "1",
        "consumer": "n1",
        "first_attempt_ms": "1",
        "dead_at_ms": "2",
    }
    poison = await redis.xadd(DEAD_STREAM, {**meta, "v": "1", "data": "{not json"})
    # A dict cannot hold a field twice; Redis can: the original's own `reason` comes second.
    clash = await redis.execute_command(
        "XADD", DEAD_STREAM, "*", *[x for kv in meta.items() for x in kv], "reason", "mine"
    )
    empty = await redis.xadd(DEAD_STREAM, meta)
    foreign = await redis.xadd(DEAD_STREAM, {"event_id": "e", "data": "{}"})
    ids = [i.decode() for i in (poison, clash, empty, foreign)]
    progress = await replay(
        redis, ids, cap=3, force=False, who="me", why="", audit_maxlen=1_000, progress=Progress()
    )
    statuses = [o.status for o in progress.outcomes]
    assert statuses == ["replayed", "replayed", "empty", "not_dead_letter"]
    events = [text(fields) for _id, fields in await redis.xrange(EVENTS_STREAM)]
    assert events == [
        {"v": "1", "data": "{not json", "replays": "1"},
        {"reason": "mine", "replays": "1"},
    ]
    assert [e[0].decode() for e in await redis.xrange(DEAD_STREAM)] == ids[2:]
    assert await redis.xlen(AUDIT_STREAM) == 2
