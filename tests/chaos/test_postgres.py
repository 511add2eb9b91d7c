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

#: ACME_DB_TIMEOUT_MS (2 s) plus scheduling slack on a busy 2-core machine.
_QUICK_503_S = 3.0


async def test_postgres_crash_mid_load_gives_quick_503s_and_loses_nothing(
    start_system: StartSystem, scale: Scale
) -> None:
    """PostgreSQL SIGKILLed for 3 s mid-load: the API answers 503 quickly (never 500, never a
    hang), every retried order is created once and e-mailed; nothing accepted is lost."""
    system = await start_system(notifiers=2)

    async def crash() -> None:
        await asyncio.sleep(scale.duration_s / 3)
        await system.crash_postgres(down_s=3.0)

    run, _ = await asyncio.gather(
        run_retrying_load(HOST, system.stack.http_port, scale.rate_per_s, scale.duration_s,
                          key_prefix="pg-crash", seed=6),
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
    """With a backlog waiting in Redis, PostgreSQL (the send ledger) down for longer than the
    whole retry schedule (~12 s here, ~2.5 min in production) dead-letters no e-mail: every one
    is sent once the ledger is back."""
    system = await start_system(notifiers=2)

    async def backlog_then_ledger_outage() -> None:
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
