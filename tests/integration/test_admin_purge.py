"""`acme dead purge` on real Redis: deletes with an audit record each, by id or by age; a dry
run and an unknown id change nothing."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from acme_notify.keys import AUDIT_STREAM
from acme_runtime.channels import DEAD_STREAM
from acme_runtime.clock import now_ms
from tests.integration.test_admin_dead import (
    acme,
    admin_env,  # noqa: F401 - a fixture, used through `usefixtures`
    seed_dead,
)

pytestmark = pytest.mark.usefixtures("admin_env")

DAY_MS = 86_400_000


async def test_purge_by_id_deletes_with_an_audit_record_each(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The named entries go; each leaves who, why, and the ids (not the envelope) behind."""
    seeded = await seed_dead(redis, 3)
    code, out, _ = await acme(
        capsys, "dead", "purge", seeded[0].dead_id, seeded[1].dead_id, "--why", "GDPR-12"
    )
    assert code == 0 and "2 purged" in out
    assert [e[0].decode() for e in await redis.xrange(DEAD_STREAM)] == [seeded[2].dead_id]
    audit = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _id, fields in await redis.xrange(AUDIT_STREAM)
    ]
    assert [a["dead_id"] for a in audit] == [seeded[0].dead_id, seeded[1].dead_id]
    first = audit[0]
    assert first["action"] == "purge" and first["who"] == "ops-tester@host-1"
    assert first["why"] == "GDPR-12" and first["order_id"] == seeded[0].order_id
    assert first["event_id"] == seeded[0].event_id and first["reason_class"] == "smtp_permanent"
    assert "data" not in first and "email" not in first


async def test_purge_older_than_takes_only_old_entries_and_dry_run_changes_nothing(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """--older-than 30d: only entries dead longer ago; --dry-run first lists them, untouched."""
    old = await seed_dead(redis, 4, start_ms=now_ms() - 40 * DAY_MS)
    recent = await seed_dead(redis, 2)
    code, out, _ = await acme(capsys, "dead", "purge", "--older-than", "30d", "--dry-run", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["summary"] == {"would_purge": 4} and document["dry_run"] is True
    assert [o["dead_id"] for o in document["outcomes"]] == [s.dead_id for s in old]
    assert await redis.xlen(DEAD_STREAM) == 6 and await redis.xlen(AUDIT_STREAM) == 0

    code, _, err = await acme(capsys, "dead", "purge", "--older-than", "30d")
    assert code == 1 and "--yes" in err and await redis.xlen(DEAD_STREAM) == 6

    code, out, _ = await acme(capsys, "dead", "purge", "--older-than", "30d", "--yes", "--json")
    assert code == 0 and json.loads(out)["summary"] == {"purged": 4}
    assert [e[0].decode() for e in await redis.xrange(DEAD_STREAM)] == [s.dead_id for s in recent]
    assert await redis.xlen(AUDIT_STREAM) == 4


async def test_purge_of_unknown_ids_or_without_a_selection_changes_nothing(
    redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown id: exit 5; no selection, both selections, a bad duration: exit 2."""
    [seed] = await seed_dead(redis, 1)
    code, _, err = await acme(capsys, "dead", "purge", seed.dead_id, "7-7", "--yes")
    assert code == 5 and "no dead entry 7-7" in err
    for argv in ([], [seed.dead_id, "--older-than", "1d"], ["--older-than", "soon"]):
        code, _, err = await acme(capsys, "dead", "purge", *argv)
        assert code == 2 and err.startswith("acme: ")
    assert await redis.xlen(DEAD_STREAM) == 1 and await redis.xlen(AUDIT_STREAM) == 0
