"""A second provider: the primary answering 421 for a minute must not be the customers' problem.

Two recording SMTP servers, the primary and the fallback (ACME_SMTP_FALLBACK_URL), each its
own process; the breakers keep the production timings (5 s, doubling to 30 s), so the figures
are the ones a deployment sees. Every order is checked as in the other scenarios; on top, the
e2e latency of the orders placed during the outage, and which provider carried the mail once
the primary was back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import pytest
from bench.loadgen import LoadResult
from bench.stack import iso_ms, nearest_rank

from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: The breaker's production timings: failback is measured as a deployment would see it.
PRODUCTION_BREAKER: Final = {"ACME_BREAKER_COOLDOWN_S": "5", "ACME_BREAKER_MAX_COOLDOWN_S": "30"}
#: CI: 50 orders/s, a 20 s outage; full (the issue's figures): 100 orders/s, 60 s.
SHAPES: Final = {"ci": (50.0, 20.0), "full": (100.0, 60.0)}
LEAD_S: Final = 5.0
#: How long after the primary's recovery the load goes on; the share is measured from
#: FAILBACK_WINDOW_S after the recovery to the end of the load.
AFTER_S: Final = 40.0
FAILBACK_WINDOW_S: Final = 30.0


def _created(load: LoadResult) -> dict[str, float]:
    return {
        r.order_id: iso_ms(r.created_at) / 1000
        for r in load.ok_records
        if r.order_id and r.created_at
    }


def _figures(
    system: ChaosSystem, orders: dict[str, float], down_at: float, up_at: float
) -> dict[str, float]:
    first = system.mail.first_at
    during = sorted(
        first[o] - at for o, at in orders.items() if down_at <= at < up_at and o in first
    )
    primary, fallback = system.primary_mail.first_at, system.fallback_mail.first_at
    late = [o for o in orders if o in first and first[o] >= up_at + FAILBACK_WINDOW_S]
    on_primary = sum(1 for o in late if o in primary and primary[o] <= fallback.get(o, 1e18))
    back = [at for at in primary.values() if at >= up_at]
    return {
        "failback_after_recovery_s": round(min(back) - up_at, 2) if back else float("nan"),
        "orders_during_outage": len(during),
        "e2e_p99_during_outage_s": round(nearest_rank(during, 0.99), 3),
        "e2e_max_during_outage_s": round(during[-1], 3) if during else float("nan"),
        "emails_by_fallback": len(fallback),
        "emails_by_primary": len(primary),
        f"share_on_primary_from_{FAILBACK_WINDOW_S:g}s_after_recovery": round(
            on_primary / len(late), 3
        )
        if late
        else float("nan"),
        "emails_in_that_window": len(late),
    }


async def test_a_primary_answering_421_for_a_minute_is_covered_by_the_fallback(
    start_system: StartSystem, scale: Scale
) -> None:
    """Primary 421 for the outage, fallback healthy: nothing lost or doubled, the outage's
    orders mailed within seconds, and the mail back on the primary after it recovers."""
    rate, outage_s = SHAPES.get(scale.name, SHAPES["ci"])
    system = await start_system(notifiers=2, fallback=True, env=PRODUCTION_BREAKER)
    window: list[float] = []

    async def outage() -> None:
        await asyncio.sleep(LEAD_S)
        await system.set_smtp(mode="greet421")
        window.append(time.time())
        await asyncio.sleep(outage_s)
        await system.set_smtp(mode="up")
        window.append(time.time())

    load, _ = await asyncio.gather(system.load(rate, LEAD_S + outage_s + AFTER_S), outage())
    verdict = await conclude(system, "primary-421-with-fallback", scale, Intake.from_load(load),
                             report=False)  # fmt: skip
    figures = _figures(system, _created(load), *window)
    verdict.extra.update(figures)
    verdict.report(system.root)
    assert verdict.duplicates == 0
    assert verdict.dead == 0
    assert not verdict.problems()
    assert figures["emails_by_fallback"] > 0, "the fallback carried the outage"
    assert figures["e2e_p99_during_outage_s"] < 10.0
    assert figures[f"share_on_primary_from_{FAILBACK_WINDOW_S:g}s_after_recovery"] >= 0.9


async def test_a_flapping_primary_with_a_fallback_duplicates_no_more_than_alone(
    start_system: StartSystem, scale: Scale
) -> None:
    """Primary flapping (4xx, drops, stored-then-hung-up), fallback healthy: a send whose
    outcome is unknown is never raced on the fallback, so the duplicates are exactly the
    messages the primary stored and hung up on, as with the primary alone."""
    system = await start_system(notifiers=2, fallback=True)
    await system.set_smtp(tempfail=0.30, drop=0.05, accept_close=0.03, seed=4)
    load = await system.load(scale.rate_per_s, scale.duration_s)
    verdict = await conclude(system, "flapping-primary-with-fallback", scale,
                             Intake.from_load(load), report=False)  # fmt: skip
    stored_then_hung_up = sum(1 for f in system.injected() if f["fault"] == "accept_close")
    verdict.extra.update(
        {
            "stored_then_hung_up": stored_then_hung_up,
            "emails_by_fallback": len(system.fallback_mail.first_at),
            "emails_by_primary": len(system.primary_mail.first_at),
        }
    )
    verdict.report(system.root)
    assert verdict.duplicates <= stored_then_hung_up
    assert verdict.duplicates == verdict.duplicates_explained
    assert verdict.dead == 0
    assert not verdict.problems()
