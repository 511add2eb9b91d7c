"""`acme stats` on real Redis and PostgreSQL (lag counted on Redis 6.2, pending, consumers,
outbox, e-mail rate), and how every admin command fails: unreachable servers, missing
configuration, unknown orders: one line and a documented exit code, never a traceback."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_cli.admin import health
from acme_cli.embedded import free_port
from acme_cli.main import main
from acme_runtime.channels import EVENTS_STREAM, RECEIPTS_STREAM
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.integration.test_admin_dead import (
    acme,
    admin_env,  # noqa: F401 - a fixture, used through `usefixtures`
    seed_dead,
)


async def seed_streams(redis: Redis) -> list[str]:
    """Events: 10 entries, 4 read by `c1`, 1 of those acknowledged, 1 unread one deleted.
    Receipts: 2 entries its group has not read. Returns the events' ids."""
    await redis.xgroup_create(EVENTS_STREAM, "notifier", id="0", mkstream=True)
    ids = [(await redis.xadd(EVENTS_STREAM, {"n": str(i)})).decode() for i in range(10)]
    await redis.xreadgroup("notifier", "c1", {EVENTS_STREAM: ">"}, count=4)
    await redis.xack(EVENTS_STREAM, "notifier", ids[0])
    await redis.xdel(EVENTS_STREAM, ids[7])
    for i in range(2):
        await redis.xadd(RECEIPTS_STREAM, {"n": str(i)})
    await redis.xgroup_create(RECEIPTS_STREAM, "orders", id="0")
    return ids


async def seed_outbox_and_ledger(pool: asyncpg.Pool) -> None:
    """Two unpublished outbox rows (the oldest 30 s old), one published; three ledger rows,
    two of them from the last minute."""
    now = datetime.now(UTC)
    for age_s, published in ((30, False), (10, False), (20, True)):
        await pool.execute(
            "INSERT INTO outbox (event_id, order_id, envelope, created_at, published_at,"
            " last_published_at, stream_id, publish_count) VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
            uuid7(),
            uuid7(),
            b"{}",
            now - timedelta(seconds=age_s),
            now if published else None,
            "1-0" if published else None,
            int(published),
        )
    for age_s in (5, 20, 300):
        await pool.execute(
            "INSERT INTO notify.sent_ledger (event_id, order_id, message_id, sent_at, smtp_reply,"
            " consumer, deliveries) VALUES ($1, $2, '<m@acme>', $3, '250 OK', 'n1', 1)",
            uuid7(),
            uuid7(),
            now - timedelta(seconds=age_s),
        )


@pytest.mark.usefixtures("admin_env")
async def test_stats_reports_lag_pending_consumers_dead_outbox_and_rate(
    redis: Redis, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: lag counted without XINFO's lag field (Redis 6.2), deleted entries excluded;
    pending and the oldest one's age; per-consumer pending; dead size; outbox; e-mails/min."""
    ids = await seed_streams(redis)
    await seed_dead(redis, 2)
    await seed_outbox_and_ledger(pool)
    code, out, _ = await acme(capsys, "stats", "--json")
    assert code == 0
    snapshot = json.loads(out)
    events, receipts = snapshot["streams"]
    assert (events["stream"], events["length"], events["last_id"]) == (EVENTS_STREAM, 9, ids[9])
    [notifier] = events["groups"]
    assert notifier["lag"] == 5 and notifier["lag_capped"] is False  # 6 unread, 1 deleted
    assert notifier["lag_method"] in ("count", "xinfo")
    assert notifier["pending"] == 3 and notifier["oldest_pending_id"] == ids[1]
    assert 0 <= notifier["oldest_pending_age_s"] < 60
    assert [(c["name"], c["pending"]) for c in notifier["consumers"]] == [("c1", 3)]
    assert receipts["groups"][0]["lag"] == 2 and receipts["groups"][0]["pending"] == 0
    assert snapshot["dead"]["length"] == 2 and snapshot["dead"]["newest_at"].endswith("Z")
    outbox = snapshot["outbox"]
    assert (outbox["unpublished"], outbox["unconfirmed"]) == (2, 1)
    assert 29 <= outbox["oldest_unpublished_s"] < 60
    assert snapshot["sent_last_minute"] == 2

    code, out, _ = await acme(capsys, "stats")
    assert code == 0
    for text in ("{acme}:events", "notifier", "c1", "dead letters", "e-mails sent, last minute"):
        assert text in out


async def test_lag_counting_stops_at_its_cap(redis: Redis) -> None:
    """A backlog beyond the cap is reported as at least the cap, not counted to the end."""
    ids = await seed_streams(redis)
    stats = await health.stream_stats(redis, EVENTS_STREAM, now_ms(), lag_cap=3)
    group = stats.groups[0]
    assert (group.lag, group.lag_capped, group.last_delivered_id) == (3, True, ids[3])


@pytest.mark.usefixtures("admin_env")
async def test_stats_watch_prints_one_json_document_per_refresh(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--watch --json --count 3: three snapshots, one compact JSON document per line; the
    table form redraws and ends after --count too."""
    argv = ["stats", "--watch", "--json", "--count", "3", "--interval", "0.05"]
    code, out, _ = await acme(capsys, *argv)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    times = [json.loads(line)["at"] for line in lines]
    assert times == sorted(times) and len(set(times)) == 3
    code, out, _ = await acme(capsys, "stats", "--watch", "--count", "2", "--interval", "0.05")
    assert code == 0 and "Streams at" in out


@pytest.mark.usefixtures("admin_env")
async def test_trace_of_an_unknown_or_malformed_order_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No such order: exit 5; not a UUID: exit 2; one line each."""
    missing = str(uuid.uuid4())
    code, out, err = await acme(capsys, "trace", missing)
    assert (code, out, err) == (5, "", f"acme: no order {missing}\n")
    code, _, err = await acme(capsys, "trace", "ORD-1")
    assert code == 2 and err == "acme: 'ORD-1' is not an order id (expected a UUID)\n"


async def test_unreachable_servers_fail_with_one_line_naming_the_url(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    database_url: str,
) -> None:
    """Nothing listening, or no such database: exit 4, the service and its URL (password
    redacted) on one line, no traceback; a command that needs only Redis ignores PostgreSQL."""
    port = free_port()
    monkeypatch.setenv("ACME_REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("ACME_DATABASE_URL", database_url)
    for argv in (["dead", "list"], ["stats"], ["dead", "replay", "--all", "--yes"]):
        code, out, err = await acme(capsys, *argv)
        assert code == 4 and out == ""
        assert err.startswith(f"acme: Redis at redis://:***@127.0.0.1:{port}/0 is unreachable: ")
        assert len(err.strip().splitlines()) == 1 and "hunter2" not in err

    monkeypatch.setenv("ACME_REDIS_URL", redis_url)
    base = database_url.rpartition("/")[0]
    for url in (f"postgresql://acme:s3cret@127.0.0.1:{port}/acme", f"{base}/no_such_db"):
        monkeypatch.setenv("ACME_DATABASE_URL", url)
        code, _, err = await acme(capsys, "trace", str(uuid7()))
        assert code == 4 and err.startswith("acme: PostgreSQL at ")
        assert "is unreachable" in err and "s3cret" not in err and "Traceback" not in err
        assert (await acme(capsys, "dead", "list"))[0] == 0


async def test_missing_configuration_is_exit_code_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """A command without the URL it needs, or with a malformed one, says which variable."""
    monkeypatch.delenv("ACME_REDIS_URL", raising=False)
    monkeypatch.delenv("ACME_DATABASE_URL", raising=False)
    code, _, err = await acme(capsys, "dead", "list")
    assert code == 3 and "ACME_REDIS_URL: not set" in err
    monkeypatch.setenv("ACME_REDIS_URL", redis_url)
    code, _, err = await acme(capsys, "trace", str(uuid7()))
    assert code == 3 and "ACME_DATABASE_URL: not set" in err
    monkeypatch.setenv("ACME_REPLAY_MAX", "many")
    code, _, err = await acme(capsys, "dead", "list")
    assert code == 3 and "ACME_REPLAY_MAX" in err


def test_help_documents_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` of each command shows examples and the exit codes, 5 included."""
    helps: dict[str, Any] = {}
    for argv in (["--help"], ["dead", "--help"], ["dead", "replay", "--help"], ["stats", "-h"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        helps[" ".join(argv)] = capsys.readouterr().out
    assert "5 not found" in helps["--help"]
    assert "acme dead replay --reason" in helps["dead --help"]
    assert "5 not found (unknown id)" in helps["dead replay --help"]
    assert "--dry-run" in helps["dead replay --help"] and "--force" in helps["dead replay --help"]
    assert "acme stats --watch" in helps["stats -h"]
