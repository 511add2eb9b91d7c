"""Redis, the transport, crashing under load: with its AOF, and losing everything it held.

PostgreSQL is the source of truth: an event Redis lost is still an unconfirmed outbox row, which
the relay's re-drive publishes again after ACME_REDRIVE_AFTER_S; the send ledger (in PostgreSQL)
turns the re-drive of an event already e-mailed into an acknowledgement, not a second e-mail.
To give the crash something to lose, the SMTP server is down from shortly before it until
shortly after, so a backlog of unread and pending entries sits in Redis when it dies.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

_DOWN_S = 2.0


async def _crash_redis_with_a_backlog(system: ChaosSystem, duration_s: float) -> None:
    await asyncio.sleep(duration_s / 6)
    await system.set_smtp(mode="down")
    await asyncio.sleep(duration_s / 4)
    await system.crash_redis(down_s=_DOWN_S)
    await asyncio.sleep(1.0)
    await system.set_smtp(mode="up")


async def _placed_when_redis_lost_its_data(system: ChaosSystem) -> int:
    """Orders created before the crash that were not sent before it (their events were lost)."""
    down = next(e.at for e in system.timeline if e.kind == "down" and e.target == "redis")
    rows = await system.db_fetch(
        "SELECT count(*) AS n FROM orders o JOIN notify.sent_ledger l ON l.order_id = o.id"
        " WHERE o.created_at < to_timestamp($1) AND l.sent_at > to_timestamp($1)",
        down,
    )
    return int(rows[0]["n"])


async def test_redis_crash_with_aof_loses_no_email_and_duplicates_none(
    start_system: StartSystem, scale: Scale
) -> None:
    """Redis killed with a backlog, restarted from its AOF: every order e-mailed exactly once."""
    system = await start_system(notifiers=2, redis_appendonly=True)
    load, _ = await asyncio.gather(
        system.load(scale.rate_per_s, scale.duration_s),
        _crash_redis_with_a_backlog(system, scale.duration_s),
    )
    backlog = await _placed_when_redis_lost_its_data(system)
    verdict = await conclude(
        system, "redis-crash-aof", scale, Intake.from_load(load), extra={"backlog": backlog}
    )
    assert backlog > 0, "entries were waiting in Redis when it crashed"
    assert verdict.duplicates == 0
    assert not verdict.problems(max_e2e_s=30.0)


async def test_redis_restart_losing_all_data_is_healed_by_the_outbox_redrive(
    start_system: StartSystem, scale: Scale
) -> None:
    """Redis restarted empty: the outbox re-drive resends what it lost, every e-mail sent once."""
    system = await start_system(notifiers=2, redis_appendonly=False)
    load, _ = await asyncio.gather(
        system.load(scale.rate_per_s, scale.duration_s),
        _crash_redis_with_a_backlog(system, scale.duration_s),
    )
    backlog = await _placed_when_redis_lost_its_data(system)
    verdict = await conclude(
        system,
        "redis-restart-data-lost",
        scale,
        Intake.from_load(load),
        extra={"backlog_lost_with_redis": backlog},
    )
    assert backlog > 0, "entries were lost with Redis"
    assert verdict.log_events.get("redrive_republished", 0) > 0, "the re-drive healed it"
    assert verdict.duplicates == 0
    assert not verdict.problems(max_e2e_s=30.0)


async def test_receipts_after_data_loss_still_reach_the_order_service(
    start_system: StartSystem, scale: Scale
) -> None:
    """After Redis restarts empty, later orders still end as 'sent' with no outbox row left."""
    system = await start_system(notifiers=1, redis_appendonly=False)
    before = Intake.from_load(await system.load(20.0, 0.5, seed=1))
    # Receipts flow before the loss: the relay's consumer group exists and works.
    waits = await system.quiesce(set(before.accepted), mail_timeout_s=15, confirm_timeout_s=15)
    assert waits["confirm_wait_s"] < 15, "receipts were applied before Redis lost its data"
    await system.crash_redis(down_s=0.5)
    after = Intake.from_load(await system.load(20.0, 1.0, seed=2))
    verdict = await conclude(
        system, "receipts-after-redis-data-loss", scale, before.plus(after),
        confirm_timeout_s=10.0,
    )  # fmt: skip
    assert verdict.delivered == verdict.accepted == 30, "the e-mails themselves go out"
    assert not verdict.problems()
