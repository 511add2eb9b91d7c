"""Processes killed with SIGKILL under load: notifiers, the relay, the API.

Nothing is lost (the outbox is the truth, pending entries are claimed by the survivors), no
order is created twice (the client retries with the same Idempotency-Key), and a duplicate
e-mail only happens when a notifier dies between the SMTP server's 250 and its ledger commit.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from bench.stack import HOST

from tests.chaos.client import run_retrying_load
from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

_KILL_EVERY_S = 2.5


def _kill_times(duration_s: float) -> list[float]:
    """When notifiers are killed, in seconds after the load starts (none in its last second)."""
    count = int((duration_s - 1.0) / _KILL_EVERY_S)
    return [_KILL_EVERY_S * (n + 1) for n in range(count)]


async def _kill_notifiers_and_relay(system: ChaosSystem, duration_s: float) -> None:
    """The relay once, early; then a notifier (alternating) on a fixed clock, so a slow kill
    or restart on a busy machine delays the next one but never drops it."""
    start = time.monotonic()
    await asyncio.sleep(_KILL_EVERY_S / 2)
    await system.kill_relay(restart_after_s=1.0)
    for n, at_s in enumerate(_kill_times(duration_s)):
        await asyncio.sleep(max(0.0, start + at_s - time.monotonic()))
        await system.kill_notifier(n % system.notifiers + 1, restart_after_s=0.5)


async def test_notifiers_and_relay_killed_repeatedly_lose_no_email(
    start_system: StartSystem, scale: Scale
) -> None:
    """Notifiers killed every 2.5 s and the relay once: every order e-mailed exactly once."""
    system = await start_system(notifiers=2)
    load, _ = await asyncio.gather(
        system.load(scale.rate_per_s, scale.duration_s),
        _kill_notifiers_and_relay(system, scale.duration_s),
    )
    # A killed relay's unacknowledged receipts are claimed after 30 s idle (ReceiptsConsumer's
    # claim_idle_ms): until then those orders still read "published".
    verdict = await conclude(
        system, "kill-notifiers-relay", scale, Intake.from_load(load), confirm_timeout_s=45.0
    )
    kills = sum(n for fault, n in verdict.faults.items() if fault.startswith("kill notifier"))
    assert kills == len(_kill_times(scale.duration_s)) >= 4
    assert verdict.faults.get("kill relay", 0) == 1
    assert verdict.failed == 0 and verdict.accepted == verdict.sent
    assert not verdict.problems(max_e2e_s=30.0)


async def test_api_killed_mid_load_creates_every_order_exactly_once(
    start_system: StartSystem, scale: Scale
) -> None:
    """API killed twice under load: retrying clients get one order each, each e-mailed once."""
    system = await start_system(notifiers=2)
    restarts: list[float] = []

    async def kill_api_twice() -> None:
        start = time.monotonic()
        for fraction in (0.3, 0.65):
            await asyncio.sleep(max(0.0, start + scale.duration_s * fraction - time.monotonic()))
            restarts.append(await system.kill_api(restart_after_s=1.0))

    run, _ = await asyncio.gather(
        run_retrying_load(HOST, system.stack.http_port, scale.rate_per_s, scale.duration_s,
                          key_prefix="api-kill", seed=2, api_key=system.stack.api_key),
        kill_api_twice(),
    )  # fmt: skip
    attempts = run.attempts_by_status()
    verdict = await conclude(
        system,
        "kill-api",
        scale,
        Intake.from_retrying(run),
        extra={
            "attempts_by_status": attempts,
            "replayed": sum(1 for o in run.orders if o.replayed),
            "api_down_s": [round(s, 2) for s in restarts],
        },
    )
    assert attempts.get("no-response", 0) > 0, "the kills happened while requests were made"
    assert verdict.accepted == verdict.sent, "every client got its order in the end"
    order_ids = [o.order_id for o in run.accepted]
    assert len(set(order_ids)) == len(order_ids), "no two keys share an order"
    assert not verdict.problems(max_e2e_s=30.0)
