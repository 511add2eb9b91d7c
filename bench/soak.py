"""Chaos soak: the whole system under a steady order load for minutes, with random faults.

Starts the system exactly as the chaos tests do (tests/chaos/harness.py: embedded durable
PostgreSQL, Redis with AOF, `acme api`, `acme relay`, `--notifiers` replicas, the
fault-injecting SMTP server, all separate processes on 127.0.0.1) and places `--rate` orders/s
for `--duration-s` through tests/chaos/client.py (which retries with the same Idempotency-Key,
so API kills and database restarts are fair game). Every `--fault-every-s` (+/- 50 %) it
injects one fault drawn at random (seeded): kill -9 of a notifier, the relay or the API; a
graceful replacement of a notifier; a PostgreSQL or Redis crash; an SMTP outage, flapping
window or slow spell. Then it waits for quiescence and checks every order like the scenarios
do (tests/chaos/verdict.py): one e-mail each, duplicates only inside the documented window,
nothing lost; the figures go to stdout and, as one JSON line, to bench/results/chaos.jsonl.

Usage: ``.tox/py311/bin/python bench/soak.py`` (10 minutes at 200 orders/s, 3 notifiers)
       ``.tox/py311/bin/python bench/soak.py --rate 100 --duration-s 120 --seed 3``
Exit status 0 when every guarantee held.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: make `bench.*` and `tests.*` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from tests.chaos.client import run_retrying_load
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude

from bench.stack import HOST

MAX_DURATION_S: Final = 3_600.0
MAX_RATE_PER_S: Final = 500.0
#: No fault in the first and last seconds of the load: the start and the tail stay clean.
_QUIET_S: Final = 10.0

Fault = Callable[[ChaosSystem, random.Random], Awaitable[str]]


async def _kill_notifier(system: ChaosSystem, rng: random.Random) -> str:
    slot = rng.choice(sorted(system.slots))
    await system.kill_notifier(slot, restart_after_s=0.5)
    return f"kill -9 notifier slot {slot}"


async def _replace_notifier(system: ChaosSystem, rng: random.Random) -> str:
    slot = rng.choice(sorted(system.slots))
    await system.sigterm_notifier(slot)
    await system.wait_started(system.start_notifier(slot), "notifier_started")
    return f"SIGTERM + replace notifier slot {slot}"


async def _kill_relay(system: ChaosSystem, _rng: random.Random) -> str:
    await system.kill_relay(restart_after_s=1.0)
    return "kill -9 relay"


async def _kill_api(system: ChaosSystem, _rng: random.Random) -> str:
    took_s = await system.kill_api(restart_after_s=1.0)
    return f"kill -9 api (ready again after {took_s:.1f} s)"


async def _crash_postgres(system: ChaosSystem, rng: random.Random) -> str:
    down_s = rng.uniform(1.0, 5.0)
    await system.crash_postgres(down_s)
    return f"PostgreSQL SIGKILL, down {down_s:.1f} s"


async def _crash_redis(system: ChaosSystem, rng: random.Random) -> str:
    down_s = rng.uniform(1.0, 5.0)
    await system.crash_redis(down_s)
    return f"Redis SIGKILL (AOF), down {down_s:.1f} s"


async def _smtp_window(system: ChaosSystem, rng: random.Random) -> str:
    kind = rng.choice(["outage", "flapping", "slow"])
    length_s = rng.uniform(5.0, 30.0)
    if kind == "outage":
        await system.set_smtp(mode=rng.choice(["greet421", "down"]))
    elif kind == "flapping":
        await system.set_smtp(tempfail=0.3, drop=0.05, accept_close=0.02, seed=rng.randrange(99))
    else:
        await system.set_smtp(delay_s=1.0)
    await asyncio.sleep(length_s)
    await system.set_smtp()
    return f"SMTP {kind} for {length_s:.0f} s"


FAULTS: Final[tuple[Fault, ...]] = (
    _kill_notifier,
    _kill_notifier,
    _replace_notifier,
    _kill_relay,
    _kill_api,
    _crash_postgres,
    _crash_redis,
    _smtp_window,
    _smtp_window,
)


async def _nemesis(system: ChaosSystem, args: argparse.Namespace, log: list[str]) -> None:
    rng = random.Random(args.seed)
    start = time.monotonic()
    await asyncio.sleep(_QUIET_S)
    # Bounded by the load's duration (and so by a count of duration / fault_every_s).
    for _ in range(int(args.duration_s / max(1.0, args.fault_every_s)) + 1):
        if time.monotonic() - start > args.duration_s - _QUIET_S:
            return
        fault = rng.choice(FAULTS)
        at_s = time.monotonic() - start
        try:
            what = await fault(system, rng)
        except AssertionError as exc:
            # The harness gave up waiting (e.g. for a restarted process): note it, go on; the
            # verdict judges what that did to the orders.
            what = f"{fault.__name__}: {exc}"
        log.append(f"{at_s:7.1f} s  {what}")
        print(f"soak: {log[-1]}", flush=True)
        await asyncio.sleep(args.fault_every_s * rng.uniform(0.5, 1.5))


async def soak(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="acme-soak-"))
    system = ChaosSystem(root, notifiers=args.notifiers)
    scale = Scale(
        "soak",
        args.rate,
        args.duration_s,
        outage_s=0.0,
        mail_timeout_s=300.0,
        confirm_timeout_s=120.0,
    )
    faults: list[str] = []
    print(f"soak: system in {root}; {args.rate:g}/s for {args.duration_s:g} s", flush=True)
    try:
        await system.start()
        run, _ = await asyncio.gather(
            run_retrying_load(HOST, system.stack.http_port, args.rate, args.duration_s,
                              key_prefix=f"soak-{args.seed}", seed=args.seed,
                              give_up_after_s=180.0, api_key=system.stack.api_key),
            _nemesis(system, args, faults),
        )  # fmt: skip
        verdict = await conclude(
            system,
            "soak",
            scale,
            Intake.from_retrying(run),
            report=False,
            extra={"attempts_by_status": run.attempts_by_status(), "fault_log": faults},
        )
        verdict.report(root)
        problems = verdict.problems(max_e2e_s=300.0)
    finally:
        await system.stop()
    for problem in problems:
        print(f"soak: PROBLEM {problem}")
    print(f"soak: {'OK' if not problems else 'NOT OK'}; logs in {root / 'logs'}")
    return 0 if not problems else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--notifiers", type=int, default=3)
    parser.add_argument("--fault-every-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not (0 < args.rate <= MAX_RATE_PER_S and 2 * _QUIET_S < args.duration_s <= MAX_DURATION_S
            and 1 <= args.notifiers <= 8 and args.fault_every_s >= 5):  # fmt: skip
        print("soak: bad --rate, --duration-s, --notifiers or --fault-every-s", file=sys.stderr)
        return 2
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
