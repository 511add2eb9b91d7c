"""`acme dead list` and `acme dead show` on real Redis and PostgreSQL; the seeding helpers the
other admin tests share; the parsing of what an operator types."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from acme_cli.admin.deadstream import list_dead
from acme_cli.admin.edge import parse_duration_ms, parse_since, stream_id
from acme_cli.admin.errors import UsageError
from acme_cli.main import main
from acme_notify.streams import Streams
from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.events import build_envelope, encode_envelope
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.integration.test_api import ORDER

CONTENT_REJECTED = "554 5.6.0 Message content rejected by the content filter"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Seeded:
    dead_id: str
    event_id: str
    order_id: str


def envelope(event_id: str, order_id: str, email: str = "ana@example.com") -> bytes:
    """A real envelope, encoded by the order service's own encoder."""
    draft = parse_order({**ORDER, "customer": {**ORDER["customer"], "email": email}})
    assert isinstance(draft, OrderDraft)
    return encode_envelope(
        build_envelope(
            event_id=event_id,
            order_id=order_id,
            draft=draft,
            created_at=datetime.now(UTC),
            traceparent=TRACEPARENT,
        )
    )


def dead_fields(
    *,
    event_id: str,
    order_id: str,
    data: bytes,
    dead_at_ms: int,
    reason_class: str = "smtp_permanent",
    reason: str = CONTENT_REJECTED,
    replays: int | None = None,
) -> dict[str, str | bytes]:
    """A dead entry in dead_letter.lua's layout: its 8 fields first, then the original's."""
    fields: dict[str, str | bytes] = {
        "original_id": f"{dead_at_ms - 900}-0",
        "reason_class": reason_class,
        "reason": reason,
        "last_error": "",
        "deliveries": "1",
        "consumer": "notifier-1",
        "first_attempt_ms": str(dead_at_ms - 900),
        "dead_at_ms": str(dead_at_ms),
        "event_id": event_id,
        "order_id": order_id,
        "type": "order.confirmation_requested",
        "v": "1",
        "data": data,
    }
    if replays is not None:
        fields["replays"] = str(replays)
    return fields


async def seed_dead(
    redis: Redis,
    count: int,
    *,
    start_ms: int | None = None,
    reason_for: Callable[[int], str] = lambda _i: "smtp_permanent",
    one_envelope: bool = False,
) -> list[Seeded]:
    """`count` dead entries, one ms apart, oldest first, written in pipelined batches."""
    start = now_ms() - count - 60_000 if start_ms is None else start_ms
    shared = envelope(str(uuid7()), str(uuid7())) if one_envelope else None
    seeded: list[Seeded] = []
    for first in range(0, count, 5_000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(first, min(count, first + 5_000)):
                event_id, order_id = str(uuid7()), str(uuid7())
                data = shared or envelope(event_id, order_id)
                dead_id = f"{start + i}-0"
                fields = dead_fields(
                    event_id=event_id,
                    order_id=order_id,
                    data=data,
                    dead_at_ms=start + i,
                    reason_class=reason_for(i),
                )
                pipe.xadd(DEAD_STREAM, fields, id=dead_id)  # type: ignore[arg-type]
                seeded.append(Seeded(dead_id, event_id, order_id))
            await pipe.execute()
    return seeded


async def dead_letter_for_real(redis: Redis, fields: dict[str, str | bytes], reason: str) -> str:
    """Publishes an entry, reads it in the notifier's group and dead-letters it through
    dead_letter.lua itself; returns the dead id."""
    await Streams(redis, "seeder").ensure_group()
    await redis.xadd(EVENTS_STREAM, fields)  # type: ignore[arg-type]
    [(_stream, [(entry_id, _fields)])] = await redis.xreadgroup(
        NOTIFIER_GROUP, "seeder", {EVENTS_STREAM: ">"}, count=1
    )
    dead_id = await Streams(redis, "seeder").dead_letter(
        entry_id.decode(), reason_class="smtp_permanent", reason=reason
    )
    assert dead_id is not None
    return dead_id


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, database_url: str) -> None:
    """The admin commands pointed at this test's Redis and database."""
    monkeypatch.setenv("ACME_REDIS_URL", redis_url)
    monkeypatch.setenv("ACME_DATABASE_URL", database_url)
    monkeypatch.setenv("ACME_OPERATOR", "ops-tester@host-1")


async def acme(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs `acme ARGV...` in-process (in a thread: it runs its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("admin_env")
async def test_list_shows_newest_first_with_masked_emails(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table lists the newest entries first, e-mail masked unless --show-pii."""
    seeded = await seed_dead(redis, 3)
    code, out, _ = await acme(capsys, "dead", "list")
    assert code == 0
    assert (
        out.index(seeded[2].dead_id) < out.index(seeded[1].dead_id) < out.index(seeded[0].dead_id)
    )
    assert "a***@example.com" in out and "ana@example.com" not in out
    assert "smtp_permanent" in out and "content rejected" in out
    code, out, _ = await acme(capsys, "dead", "list", "--show-pii")
    assert code == 0 and "ana@example.com" in out


@pytest.mark.usefixtures("admin_env")
async def test_list_json_has_the_documented_schema(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: total, entries with snake_case keys, ISO UTC times, ids as strings, cursor."""
    seeded = await seed_dead(redis, 2)
    code, out, _ = await acme(capsys, "dead", "list", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["total"] == 2 and document["next_before"] is None
    first = document["entries"][0]
    assert list(first) == [
        "dead_id",
        "original_id",
        "event_id",
        "order_id",
        "email",
        "reason_class",
        "reason",
        "last_error",
        "deliveries",
        "consumer",
        "replays",
        "first_attempt_at",
        "dead_at",
        "where",
    ]
    assert first["where"] == "stream" and document["in_archive"] == 0
    assert first["dead_id"] == seeded[1].dead_id and first["order_id"] == seeded[1].order_id
    assert first["email"] == "a***@example.com" and first["deliveries"] == 1
    assert first["dead_at"].endswith("Z") and datetime.fromisoformat(first["dead_at"])


@pytest.mark.usefixtures("admin_env")
async def test_list_of_50k_entries_reads_one_page_quickly(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """On 50,000 entries `list --limit 20` answers the 20 newest in well under a second with a
    single XREVRANGE, holding about one page in memory; the next page carries on from there."""
    seeded = await seed_dead(redis, 50_000, one_envelope=True)
    await redis.config_resetstat()
    started = time.perf_counter()
    code, out, _ = await acme(capsys, "dead", "list", "--limit", "20", "--json")
    elapsed = time.perf_counter() - started
    assert code == 0
    assert elapsed < 1.0, f"dead list took {elapsed:.2f}s"
    document = json.loads(out)
    newest = [s.dead_id for s in reversed(seeded)]
    assert [e["dead_id"] for e in document["entries"]] == newest[:20]
    assert document["total"] == 50_000 and document["next_before"] == newest[19]
    calls: Any = await redis.info("commandstats")
    assert calls["cmdstat_xrevrange"]["calls"] == 1 and "cmdstat_xrange" not in calls

    code, out, _ = await acme(
        capsys, "dead", "list", "--limit", "20", "--before", document["next_before"], "--json"
    )
    assert [e["dead_id"] for e in json.loads(out)["entries"]] == newest[20:40]

    tracemalloc.start()
    try:
        page = await list_dead(redis, limit=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(page.entries) == 20
    assert peak < 1_000_000, f"listing one page allocated {peak} bytes at its peak"


@pytest.mark.usefixtures("admin_env")
async def test_list_filters_by_reason_and_since_across_pages(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rare reason among 20,000 entries: the newest matches are found across many pages;
    --since keeps only the entries dead within the window."""
    start = now_ms() - 30 * 60_000

    def reason(i: int) -> str:
        return "invalid_recipient" if i % 1_000 == 0 else "smtp_permanent"

    seeded = await seed_dead(redis, 20_000, start_ms=start, reason_for=reason, one_envelope=True)
    code, out, _ = await acme(
        capsys, "dead", "list", "--reason", "invalid_recipient", "--limit", "3", "--json"
    )
    assert code == 0
    entries = json.loads(out)["entries"]
    assert [e["dead_id"] for e in entries] == [seeded[i].dead_id for i in (19_000, 18_000, 17_000)]
    assert {e["reason_class"] for e in entries} == {"invalid_recipient"}

    recent = start + 19_990  # only the last ten entries are dead after this
    since = datetime.fromtimestamp(recent / 1000, UTC).isoformat()
    code, out, _ = await acme(capsys, "dead", "list", "--since", since, "--json")
    assert [e["dead_id"] for e in json.loads(out)["entries"]] == [
        s.dead_id for s in reversed(seeded[19_990:])
    ]


@pytest.mark.usefixtures("admin_env")
async def test_show_explains_an_entry_with_envelope_and_order_timeline(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """show: the reason, the envelope pretty-printed (e-mail masked), the trace id; with
    --json, the same as a document, here for an entry dead-lettered by dead_letter.lua."""
    event_id, order_id = str(uuid7()), str(uuid7())
    original = {
        "event_id": event_id,
        "order_id": order_id,
        "type": "order.confirmation_requested",
        "v": "1",
        "data": envelope(event_id, order_id),
    }
    dead_id = await dead_letter_for_real(redis, original, CONTENT_REJECTED)  # type: ignore[arg-type]
    code, out, _ = await acme(capsys, "dead", "show", dead_id)
    assert code == 0
    assert CONTENT_REJECTED in out and "a***@example.com" in out and "ana@example.com" not in out
    assert "Caneca" in out and "4bf92f3577b34da6a3ce929d0e0e4736" in out
    code, out, _ = await acme(capsys, "dead", "show", dead_id, "--json", "--show-pii")
    document = json.loads(out)
    assert document["entry"]["dead_id"] == dead_id
    assert document["entry"]["consumer"] == "seeder"
    assert document["envelope"]["payload"]["customer"]["email"] == "ana@example.com"
    assert document["fields"] == {
        "event_id": event_id,
        "order_id": order_id,
        "type": "order.confirmation_requested",
        "v": "1",
    }
    assert document["order"] is None and document["ledger"] is None and document["audit"] == []


@pytest.mark.usefixtures("admin_env")
async def test_show_of_an_unknown_or_malformed_id_says_so(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown id is exit code 5, a malformed one 2, each one line and no traceback."""
    await seed_dead(redis, 1)
    code, out, err = await acme(capsys, "dead", "show", "1-0")
    assert (code, out) == (5, "")
    assert err.strip() == "acme: no dead entry 1-0 (`acme dead list` shows the ids)"
    code, _, err = await acme(capsys, "dead", "show", "yesterday")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a stream id" in err
    code, _, err = await acme(capsys, "dead", "list", "--since", "a while")
    assert code == 2 and "Traceback" not in err


def test_operator_input_parses_or_says_what_was_expected() -> None:
    """Durations, points in time and stream ids: parsed, or a UsageError naming the format."""
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("7d") == 7 * 86_400_000
    assert parse_since("2h", now_ms=10_000_000) == 10_000_000 - 7_200_000
    assert parse_since("2024-05-01T10:00Z", now_ms=0) == 1_714_557_600_000
    assert parse_since("2024-05-01T10:00", now_ms=0) == 1_714_557_600_000  # UTC assumed
    assert stream_id(" 1714557600000-3 ") == "1714557600000-3"
    for bad in ("1h30", "", "-5m"):
        with pytest.raises(UsageError, match="duration"):
            parse_duration_ms(bad)
    for bad in ("1714557600000", "abc-1", "1-2-3"):
        with pytest.raises(UsageError, match="stream id"):
            stream_id(bad)
