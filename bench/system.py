"""One benchmark run's system: started fresh, watched by a `Monitor`, offered load, stopped.

`stack_run` starts a `Stack` (bench/stack.py) with the services a scenario needs, runs the
scenario's coroutine on it in a fresh event loop and always stops it; inside, `Run.open`
waits until it is ready and starts the monitor, `offer` sends open-loop load in chunks,
`warm_up` and `measure_step` are the pieces the scenarios are made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis

from bench.cpu import CpuSnapshot, cpu_table, user_system_s, user_system_split
from bench.e2e import child_logs, wait_ready
from bench.figures import orders_of
from bench.loadgen import LoadResult, run_load
from bench.monitor import Monitor
from bench.scenarios import RunOptions, Scenario
from bench.stack import HOST, Child, MailLog, Stack, signals_ignored

__all__ = ["Run", "Step", "child_named", "measure_step", "offer", "stack_run", "warm_up"]

#: run_load accepts at most 600 s; longer loads are offered as back-to-back chunks of this.
_CHUNK_S: Final = 300.0
_MAX_CHUNKS: Final = 40
_READY_TIMEOUT_S: Final = 60.0


def _start_stack(
    root: Path,
    notifiers: int,
    *,
    sink: bool,
    outage_mode: str = "refuse",
    env: dict[str, str] | None = None,
) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    stack = Stack(root)
    stack.start_servers()
    if sink:
        stack.start_recorder_sink(root / "received.csv", extra_args=["--outage-mode", outage_mode])
    stack.start_api(env)
    stack.start_relay(env)
    if notifiers:
        stack.start_notifiers(notifiers, env)
    return stack


async def _ready(stack: Stack, sink: bool) -> float:
    if sink:
        return await wait_ready(stack, stack.root / "received.csv")
    return await stack.wait_api_ready(_READY_TIMEOUT_S)


def stack_run(
    root: Path,
    notifiers: int,
    options: RunOptions,
    *,
    sink: bool,
    env: dict[str, str] | None,
    body: Callable[[Stack], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """Start a system, run `body` on it in a fresh event loop, stop it, keep its logs.

    Synchronous on purpose: the services must be spawned from the main thread (their
    PR_SET_PDEATHSIG is tied to the thread that forks them) and outside an event loop
    (Stack.start_servers runs the migrations with asyncio.run)."""
    stack = _start_stack(root, notifiers, sink=sink, outage_mode=options.outage_mode, env=env)
    try:
        result = asyncio.run(body(stack))
    finally:
        _stop(stack, options)
    # After the stop: shutdown warnings and errors are in the logs too.
    result.setdefault("logs", child_logs(stack))
    return result


def _stop(stack: Stack, options: RunOptions) -> None:
    with signals_ignored():
        stack.stop()
        if not options.keep_data:
            stack.remove_data()


def child_named(stack: Stack, name: str) -> Child:
    return next(c for c in stack.children if c.name == name)


@dataclass
class Run:
    """One started system with its monitor; `close()` stops both."""

    stack: Stack
    mail: MailLog | None
    redis: Redis
    monitor: Monitor
    stop: asyncio.Event
    task: asyncio.Task[None]
    t0_unix: float
    ready_s: float

    @classmethod
    async def open(cls, stack: Stack, *, sink: bool, rss_every_s: float) -> Run:
        ready_s = await _ready(stack, sink)
        mail = MailLog(stack.root / "received.csv") if sink else None
        redis = Redis.from_url(stack.redis_url, socket_timeout=5)
        monitor = Monitor(stack, stack.roots(), mail, redis, rss_every_s)
        stop = asyncio.Event()
        t0_unix = time.time()
        task = asyncio.create_task(monitor.run(stop))
        return cls(stack, mail, redis, monitor, stop, task, t0_unix, ready_s)

    def snapshot(self) -> CpuSnapshot:
        return self.stack.snapshot(self.monitor.roots)

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await self.task
        await self.redis.aclose()


async def offer(
    port: int,
    rate_per_s: float,
    duration_s: float,
    prefix: str,
    seed: int,
    *,
    connections: int,
    drain_timeout_s: float = 30.0,
    api_key: str | None = None,
) -> list[LoadResult]:
    """`rate_per_s` for `duration_s`, as back-to-back run_load chunks of at most _CHUNK_S."""
    results: list[LoadResult] = []
    remaining = duration_s
    for chunk in range(_MAX_CHUNKS):
        if remaining <= 1e-6:
            break
        length = min(remaining, _CHUNK_S)
        results.append(
            await run_load(
                HOST,
                port,
                rate_per_s,
                length,
                connections,
                drain_timeout_s=drain_timeout_s,
                key_prefix=f"{prefix}-{chunk}",
                seed=seed + chunk,
                api_key=api_key,
            )
        )
        remaining -= length
    return results


async def warm_up(run: Run, scenario: Scenario, options: RunOptions) -> list[LoadResult]:
    if scenario.warmup_s <= 0:
        return []
    loads = await offer(
        run.stack.http_port,
        scenario.rate_per_s,
        scenario.warmup_s,
        f"warmup-{os.getpid()}",
        1,
        connections=options.connections,
        api_key=run.stack.api_key,
    )
    if run.mail is not None:
        wanted = {o.order_id for o in orders_of(loads) if o.order_id}
        await run.mail.wait_for(wanted, scenario.mail_drain_s, run.stack)
    return loads


@dataclass
class Step:
    """One stretch of constant load and what each process spent during it."""

    loads: list[LoadResult]
    before: CpuSnapshot
    after: CpuSnapshot
    user_system: dict[str, dict[str, float]]

    def cpu(self) -> dict[str, Any]:
        accepted = sum(len(load.ok_records) for load in self.loads)
        return cpu_table(self.before, self.after, accepted)


async def measure_step(
    run: Run, rate: float, step_s: float, index: int, options: RunOptions
) -> Step:
    before = run.snapshot()
    split_before = user_system_s(run.monitor.roots)
    loads = await offer(
        run.stack.http_port,
        rate,
        step_s,
        f"step{index}-{os.getpid()}",
        10 + index,
        connections=options.connections,
        api_key=run.stack.api_key,
        drain_timeout_s=20.0,
    )
    after = run.snapshot()
    split = user_system_split(split_before, user_system_s(run.monitor.roots))
    return Step(loads, before, after, split)
