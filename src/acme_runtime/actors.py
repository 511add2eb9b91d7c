"""The actor runtime every long-lived loop in both services runs under.

An actor is an object with a `name` and an `async run(stop)` coroutine that returns once `stop`
is set. The `Supervisor` starts actors as tasks, restarts one that crashes (with exponential
backoff, so a broken dependency does not spin the CPU) and shuts all of them down in two phases:
first it sets `stop` and lets them finish in-flight work for `grace_s`, then it cancels what is
left. Signals only set the stop event (`install_signal_handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter

from acme_runtime.backoff import Backoff

__all__ = [
    "Actor",
    "PeriodicActor",
    "Supervisor",
    "install_signal_handlers",
    "sleep_or_stop",
    "tick_failures_counter",
]

log = structlog.get_logger(__name__)


class Actor(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


async def sleep_or_stop(
    stop: asyncio.Event, delay_s: float, wake: asyncio.Event | None = None
) -> None:
    """Sleeps `delay_s`, returning early when `stop` (or the optional `wake` hint) is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if wake is not None:
            wake.clear()


def tick_failures_counter(registry: CollectorRegistry) -> Counter:
    """`acme_actor_tick_failures_total{actor}`, registered with a process's metrics."""
    return Counter(
        "acme_actor_tick_failures_total",
        "Rounds of a periodic actor (claimer, reaper, relay, probes, janitors) that failed: "
        "its work, and any gauge it keeps, is stale until a round succeeds again.",
        ["actor"],
        registry=registry,
    )


class PeriodicActor:
    """Runs `tick()` every `interval_s` (sooner when `wake` is set) until stopped.

    A failing tick is logged, counted in `failures` (the supervisor hands every periodic actor
    its `acme_actor_tick_failures_total` child) and retried after the interval: a periodic
    sweep never dies of one bad round, and never fails silently either. `tick` returns True
    when it did a full batch, meaning more work is probably waiting, and then runs again at
    once.
    """

    #: Counts failed ticks; set by the `Supervisor` when it has a counter.
    failures: Counter | None = None

    def __init__(
        self,
        name: str,
        tick: Callable[[], Awaitable[bool]],
        interval_s: float,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self._tick = tick
        self._interval_s = interval_s
        self._wake = wake

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            busy = False
            try:
                busy = await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sweep logs, counts and carries on
                log.warning("periodic_tick_failed", actor=self.name, error=repr(exc))
                if self.failures is not None:
                    self.failures.inc()
            if not busy:
                await sleep_or_stop(stop, self._interval_s, self._wake)


class Supervisor:
    """Starts actors, restarts crashed ones with backoff, stops them in two phases."""

    def __init__(
        self,
        actors: list[Actor],
        *,
        grace_s: float = 10.0,
        restart_initial_s: float = 0.5,
        restart_max_s: float = 30.0,
        tick_failures: Counter | None = None,
    ) -> None:
        self._actors = actors
        if tick_failures is not None:
            for actor in actors:
                if isinstance(actor, PeriodicActor):
                    actor.failures = tick_failures.labels(actor.name)
        self._grace_s = grace_s
        self._restart_initial_s = restart_initial_s
        self._restart_max_s = restart_max_s
        self.stop = asyncio.Event()
        self.restarts: dict[str, int] = {}

    async def _keep_running(self, actor: Actor) -> None:
        backoff = Backoff(self._restart_initial_s, self._restart_max_s)
        while not self.stop.is_set():
            try:
                await actor.run(self.stop)
                if self.stop.is_set():
                    return
                log.warning("actor_returned_early", actor=actor.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("actor_crashed", actor=actor.name, error=repr(exc))
            self.restarts[actor.name] = self.restarts.get(actor.name, 0) + 1
            await sleep_or_stop(self.stop, backoff.next_s())

    async def run(self) -> None:
        """Runs until `stop` is set, then drains for `grace_s` and cancels the rest."""
        tasks = [
            asyncio.create_task(self._keep_running(actor), name=actor.name)
            for actor in self._actors
        ]
        try:
            await self.stop.wait()
        except asyncio.CancelledError:
            # Cancelled from outside: no drain, but no actor may outlive its supervisor.
            await _cancel_all(tasks)
            raise
        log.info("shutdown_draining", grace_s=self._grace_s)
        _done, pending = await asyncio.wait(tasks, timeout=self._grace_s)
        for task in pending:
            log.warning("shutdown_cancelling", actor=task.get_name())
        await _cancel_all(pending)


async def _cancel_all(tasks: Collection[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; a second signal is ignored while draining."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
