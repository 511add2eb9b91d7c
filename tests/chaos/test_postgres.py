"""PostgreSQL, the source of truth, crashing under load.

While it is down the API answers 503 with Retry-After at once (no hang, no 500, no partial
order: the order and its outbox row are one statement); clients retrying with the same
Idempotency-Key get their order once it is back; the notifiers, whose send ledger lives there,
hold on to what they read and deliver it afterwards.
"""

from __future__ import annotations

import asyncio

import pytest
from bench.stack import HOST

from tests.chaos.client import run_retrying_load
from tests.chaos.conftest import StartSystem
from tests.chaos.harness import Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: ACME_DB_TIMEOUT_MS (2 s) to give up on the query, plus up to as long again for asyncpg to
#: cancel it and release the connection to a frozen server, plus slack on a busy 2-core box;
#: a hang would be the client's 5 s attempt timeout, then retries.
_QUICK_503_S = 4.8


async def test_postgres_crash_mid_load_gives_quick_503s_and_loses_nothing(
    start_system: StartSystem, scale: Scale
) -> None:
    """PostgreSQL killed for 3 s: quick 503s, no 500 or hang; every order made once and sent."""
    system = await start_system(notifiers=2)

    async def crash() -> None:
        await asyncio.sleep(scale.duration_s / 3)
        await system.crash_postgres(down_s=3.0)

    run, _ = await asyncio.gather(
        run_retrying_load(HOST, system.stack.http_port, scale.rate_per_s, scale.duration_s,
                          key_prefix="pg-crash", seed=6, api_key=system.stack.api_key),
        crash(),
    )  # fmt: skip
    attempts = run.attempts_by_status()
    slowest_503_s = run.slowest_attempt_s(503)
    down = next(e.at for e in system.timeline if e.kind == "down")
    verdict = await conclude(
        system,
        "postgres-crash",
        scale,
        Intake.from_retrying(run),
        extra={
            "attempts_by_status": attempts,
            "slowest_503_s": round(slowest_503_s, 3),
            "slowest_201_s": round(run.slowest_attempt_s(201), 3),
            "slowest_503s_sent_after_crash_s": [
                (round(a.sent_at - down, 2), round(a.latency_s, 2)) for a in run.slowest(503)
            ],
            "replayed": sum(1 for o in run.orders if o.replayed),
        },
    )
    assert attempts.get("503", 0) > 0, "the crash happened under load"
    assert attempts.get("500", 0) == 0, "a database outage is a 503, never a 500"
    assert attempts.get("no-response", 0) == 0, "no request hung or lost its connection"
    assert slowest_503_s < _QUICK_503_S
    assert verdict.accepted == verdict.sent
    assert not verdict.problems(max_e2e_s=30.0)


async def test_postgres_outage_longer_than_the_retry_schedule_dead_letters_nothing(
    start_system: StartSystem, scale: Scale
) -> None:
    """The ledger down longer than the retry schedule dead-letters nothing; all sent afterwards."""
    system = await start_system(notifiers=2)

    async def backlog_then_ledger_outage() -> None:
        # SMTP down first, so a backlog waits in Redis; then PostgreSQL (the send ledger) goes
        # for 15 s, longer than the short retry schedule (~12 s; ~2.5 min in production), and
        # SMTP comes back: the notifiers read the backlog but cannot check the ledger.
        await asyncio.sleep(1.0)
        await system.set_smtp(mode="down")
        await asyncio.sleep(2.5)
        await system.postgres_down()
        await system.set_smtp(mode="up")
        await asyncio.sleep(15.0)
        await system.postgres_up()

    load, _ = await asyncio.gather(system.load(scale.rate_per_s, 3.0), backlog_then_ledger_outage())
    verdict = await conclude(system, "postgres-outage-15s", scale, Intake.from_load(load))
    assert verdict.dead == 0
    assert not verdict.problems(max_e2e_s=60.0)


async def test_postgres_hanging_is_answered_with_quick_503s_not_a_hang(
    start_system: StartSystem, scale: Scale
) -> None:
    """PostgreSQL frozen (SIGSTOP) for 10 s under load: every request answered within ~4 s."""
    system = await start_system(notifiers=1)

    async def freeze() -> None:
        await asyncio.sleep(2.0)
        await system.freeze_postgres(10.0)

    # A patient client (30 s per attempt), so the API's own answer time is what is measured.
    run, _ = await asyncio.gather(
        run_retrying_load(HOST, system.stack.http_port, scale.rate_per_s, 6.0,
                          key_prefix="pg-freeze", seed=7, attempt_timeout_s=30.0,
                          api_key=system.stack.api_key),
        freeze(),
    )  # fmt: skip
    slowest = max((a for o in run.orders for a in o.attempts), key=lambda a: a.latency_s)
    freeze_at = next(e.at for e in system.timeline if e.kind == "freeze")
    verdict = await conclude(
        system,
        "postgres-frozen-10s",
        scale,
        Intake.from_retrying(run),
        extra={
            "attempts_by_status": run.attempts_by_status(),
            "slowest_attempt": (slowest.status, round(slowest.latency_s, 2),
                                round(slowest.sent_at - freeze_at, 2)),
        },
    )  # fmt: skip
    assert not verdict.problems(max_e2e_s=60.0)
    assert slowest.latency_s < _QUICK_503_S, "a hung database must not hang the API"
