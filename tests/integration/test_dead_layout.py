"""The dead stream's layout by name (acme_runtime.deadletter_layout) on a real Redis: the Lua
scripts that write and read dead entries and the Python reader agree on every field, for a
poison entry that reuses the dead letter's own names, and for entries in the layout before."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from acme_cli.admin.actions import Progress, purge, replay
from acme_cli.admin.deadletters import decode_dead_entry
from acme_cli.admin.deadstream import scan_index
from acme_notify.keys import AUDIT_STREAM
from acme_notify.streams import Streams
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM
from acme_runtime.deadletter_layout import (
    LAYOUT,
    LAYOUT_VERSION,
    OWN_FIELDS,
    split_dead_fields,
)

LUA = Path(__file__).resolve().parents[2] / "lua"

#: A poison entry whose fields take the dead letter's own names, the escape prefix, and bytes
#: that are not UTF-8.
POISON: dict[bytes, bytes] = {
    b"v": b"1",
    b"reason": b"mine",
    b"reason_class": b"forged",
    b"dead_layout": b"9",
    b"orig:x": b"prefixed",
    b"order_id": b"\xff\xfe",
    b"data": b"{not json",
}


#: A layout-1 dead entry's own fields (no dead_layout; original_id first, dead_at_ms last).
LEGACY_OWN: list[bytes] = [
    b"original_id", b"1-0", b"reason_class", b"poison", b"reason", b"undecodable",
    b"last_error", b"", b"deliveries", b"1", b"consumer", b"n1",
    b"first_attempt_ms", b"1", b"dead_at_ms", b"2",
]  # fmt: skip


async def add_legacy(redis: Redis, *original: bytes) -> str:
    """A layout-1 dead entry with these original fields (name, value, ...); its id."""
    reply = await redis.execute_command("XADD", DEAD_STREAM, "*", *LEGACY_OWN, *original)
    return str(reply.decode())


def lua_own_fields(script: str) -> set[str]:
    """The names in a script's `local OWN = {...}` table."""
    source = (LUA / f"{script}.lua").read_text()
    match = re.search(r"local OWN = \{(.*?)\}", source, re.S)
    assert match, f"{script}.lua has no OWN table"
    return set(re.findall(r"(\w+) = true", match.group(1)))


async def raw_entry(redis: Redis, stream: str, entry_id: str) -> list[bytes]:
    """An entry's fields as Redis holds them: a flat list, a repeated name kept twice."""
    reply: Any = await redis.eval(
        "return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1][2]", 1, stream, entry_id
    )
    return list(reply)


async def dead_letter_poison(redis: Redis, fields: dict[bytes, bytes] = POISON) -> tuple[str, str]:
    """POISON (or `fields`) on the events stream, read once and dead-lettered by the
    notifier's own script; (original id, dead id)."""
    entry_id = (await redis.xadd(EVENTS_STREAM, fields)).decode()  # type: ignore[arg-type]
    streams = Streams(redis, "n1")
    await streams.ensure_group()
    await streams.read_new(1, 10)
    dead_id = await streams.dead_letter(entry_id, reason_class="poison", reason="undecodable")
    assert dead_id is not None
    return entry_id, dead_id


def test_the_scripts_and_the_python_layout_name_the_same_own_fields() -> None:
    assert lua_own_fields("dead_letter") == set(OWN_FIELDS)
    assert lua_own_fields("replay_dead") == set(OWN_FIELDS)
    assert OWN_FIELDS[0] == LAYOUT


async def test_a_poison_entry_dies_with_each_name_once_and_reads_back_by_name(
    redis: Redis,
) -> None:
    """Every name occurs once in the dead entry; the Python reader, the index script and the
    purge audit all take the dead letter's own reason class, not the poison's forged one."""
    entry_id, dead_id = await dead_letter_poison(redis)

    flat = await raw_entry(redis, DEAD_STREAM, dead_id)
    names = flat[0::2]
    assert len(names) == len(set(names))
    assert flat[:2] == [LAYOUT.encode(), LAYOUT_VERSION.encode()]

    dead: Any = await redis.xrange(DEAD_STREAM, dead_id, dead_id)
    own, original, named = split_dead_fields(dead[0][1])
    assert named
    assert original == POISON
    assert own["original_id"] == entry_id.encode() and own["reason_class"] == b"poison"
    assert own["reason"] == b"undecodable"

    entry = decode_dead_entry(dead_id, dead[0][1])
    assert (entry.reason_class, entry.reason, entry.original_id) == (
        "poison",
        "undecodable",
        entry_id,
    )
    assert entry.order_id == "\ufffd\ufffd"

    [indexed] = [e async for e in scan_index(redis)]
    assert (indexed.reason_class, indexed.order_id) == ("poison", "\ufffd\ufffd")

    await purge(redis, [dead_id], who="t", why="", audit_maxlen=100, progress=Progress())
    audit: Any = await redis.xrange(AUDIT_STREAM)
    assert audit[-1][1][b"reason_class"] == b"poison"


async def test_a_replay_puts_back_exactly_the_original_fields(redis: Redis) -> None:
    """The reserved names lose their prefix again and nothing of the dead letter's own goes
    back; `replays` is one more, and a second death and replay keep counting."""
    _entry_id, dead_id = await dead_letter_poison(redis)
    progress = await replay(
        redis, [dead_id], cap=5, force=False, who="t", why="", audit_maxlen=100,
        progress=Progress(),
    )  # fmt: skip
    [outcome] = progress.outcomes
    assert (outcome.status, outcome.replays) == ("replayed", 1)
    assert outcome.new_id is not None

    back = await raw_entry(redis, EVENTS_STREAM, outcome.new_id)
    assert dict(zip(back[0::2], back[1::2], strict=True)) == POISON | {b"replays": b"1"}

    streams = Streams(redis, "n1")
    await streams.read_new(1, 10)
    second = await streams.dead_letter(outcome.new_id, reason_class="poison", reason="again")
    assert second is not None
    dead: Any = await redis.xrange(DEAD_STREAM, second, second)
    assert split_dead_fields(dead[0][1]).original == POISON | {b"replays": b"1"}
    assert decode_dead_entry(second, dead[0][1]).replays == 1


async def test_an_entry_in_the_layout_before_still_reads_and_replays(redis: Redis) -> None:
    """Layout 1 (no dead_layout field, the own fields first, a poison's clashing name after
    them): the scripts take the own reason class and replay the fields after dead_at_ms."""
    legacy = await add_legacy(redis, b"reason_class", b"forged", b"v", b"1")

    [indexed] = [e async for e in scan_index(redis)]
    assert indexed.reason_class == "poison"
    dead: Any = await redis.xrange(DEAD_STREAM, legacy, legacy)
    assert not split_dead_fields(dead[0][1]).named
    assert decode_dead_entry(legacy, dead[0][1]).original_id == "1-0"

    progress = await replay(
        redis, [legacy], cap=5, force=False, who="t", why="", audit_maxlen=100,
        progress=Progress(),
    )  # fmt: skip
    [outcome] = progress.outcomes
    assert outcome.status == "replayed" and outcome.new_id is not None
    back = await raw_entry(redis, EVENTS_STREAM, outcome.new_id)
    assert back == [b"reason_class", b"forged", b"v", b"1", b"replays", b"1"]
