"""Watching the machine during a benchmark, with psutil: is it quiet, what is it, and what
every process of the system under test does second by second.

`wait_until_quiet` holds a run back until the 1-minute load is low and no other test suite
or `acme` runs (figures taken on a busy box are labelled provisional). `Monitor` samples, once
a second: every process tree's CPU time (bench/cpu.py), the notifier group's lag, pending
count and oldest unread age (`acme_notify.probe.measure_stream`), the e-mails received so far
and the live notifier replicas; every `rss_every_s` the resident memory of each service.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Final

import psutil
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_notify.probe import measure_stream
from bench.stack import MailLog, Stack

__all__ = [
    "MAX_RUN_S",
    "Monitor",
    "busy_processes",
    "loadavg",
    "machine",
    "nproc",
    "rss_mb",
    "wait_until_quiet",
]

#: No benchmark run lasts longer; it also bounds the monitor's loop.
MAX_RUN_S: Final = 3 * 3_600.0
_TICK_S: Final = 1.0
_QUIET_LOAD: Final = 1.0
_QUIET_POLL_S: Final = 30.0
_BUSY_MARKERS: Final = ("pytest", "acme_cli.main")
_MIB: Final = 1024 * 1024


# --- the machine ---------------------------------------------------------------------------


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages, as text."""
    return " ".join(f"{load:.2f}" for load in psutil.getloadavg())


def machine() -> dict[str, Any]:
    return {
        "nproc": nproc(),
        "memory_total_mb": round(psutil.virtual_memory().total / _MIB),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": loadavg(),
    }


def rss_mb(pid: int) -> float | None:
    """Resident set size of one process in MiB; None if it is gone."""
    try:
        return float(psutil.Process(pid).memory_info().rss / _MIB)
    except psutil.Error:
        return None


# --- is the machine quiet? ----------------------------------------------------------------


def _ours() -> set[int]:
    """This process and its ancestors (a pytest running the smoke test), init aside."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents() if p.pid > 1)}


def busy_processes() -> list[str]:
    """Other `pytest` / `acme_cli.main` processes on the machine (pid and command line), not
    counting ours and our children."""
    mine = _ours()
    found = []
    for process in psutil.process_iter(["ppid", "cmdline"]):
        if process.pid in mine or process.info["ppid"] in mine:
            continue
        command = " ".join(process.info["cmdline"] or ())
        if any(marker in command for marker in _BUSY_MARKERS):
            found.append(f"{process.pid} {command[:120]}")
    return found


def wait_until_quiet(timeout_s: float, poll_s: float = _QUIET_POLL_S) -> dict[str, Any]:
    """Wait (at most `timeout_s`) until the 1-minute load is < 1.0 and no other test suite or
    acme process runs. The verdict says whether the figures are provisional."""
    start = time.monotonic()
    checks = max(1, math.ceil(timeout_s / poll_s) + 1) if timeout_s > 0 else 1
    load, busy = psutil.getloadavg()[0], busy_processes()
    for check in range(checks):
        load, busy = psutil.getloadavg()[0], busy_processes()
        if load < _QUIET_LOAD and not busy:
            break
        if check + 1 < checks:
            print(
                f"machine busy (load {load:.2f}, {len(busy)} other test/acme processes); "
                f"waiting {poll_s:g} s ...",
                flush=True,
            )
            time.sleep(poll_s)
    quiet = load < _QUIET_LOAD and not busy
    return {
        "quiet": quiet,
        "waited_s": round(time.monotonic() - start, 1),
        "load1": load,
        "other_processes": busy[:10],
        "label": "" if quiet else f"provisional, machine busy (load {load:.2f})",
    }


# --- the system under test, second by second ----------------------------------------------


@dataclass
class Monitor:
    """Samples CPU, RSS, the stream and the mail once a second, until stopped."""

    stack: Stack
    roots: dict[str, int]
    mail: MailLog | None
    redis: Redis
    rss_every_s: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        next_at = time.monotonic()
        next_rss = next_at
        # Bounded by MAX_RUN_S: one tick per second.
        for _ in range(int(MAX_RUN_S / _TICK_S)):
            if stop.is_set():
                return
            await self.tick(with_rss=time.monotonic() >= next_rss)
            if time.monotonic() >= next_rss:
                next_rss += self.rss_every_s
            next_at += _TICK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    def _replicas(self) -> int:
        return sum(1 for c in self.stack.children if c.name.startswith("notifier-") and c.alive)

    async def tick(self, *, with_rss: bool) -> None:
        # Processes are read in a thread: the scan of every process takes a few ms, which would
        # otherwise delay the generator's requests on this event loop.
        snapshot = await asyncio.to_thread(self.stack.snapshot, self.roots)
        sample: dict[str, Any] = {
            "t_unix": time.time(),
            "cpu_s": {k: round(v, 3) for k, v in snapshot.by_name.items()},
            "machine_busy_s": round(snapshot.machine_busy_s, 3),
            "replicas": self._replicas(),
        }
        if with_rss:
            sample["rss_mb"] = {
                name: round(value, 1)
                for name, pid in self.roots.items()
                if (value := rss_mb(pid)) is not None
            }
        try:
            async with asyncio.timeout(2.0):
                state = await measure_stream(self.redis)
            sample.update(
                lag=state["lag"],
                pending=state["pending"],
                oldest_unread_age_s=round(state["oldest_unread_age_s"], 3),
                oldest_pending_age_s=round(state["oldest_pending_age_s"], 3),
                dead=state["dead"],
                stream_length=state["length"],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            sample["stream_error"] = repr(exc)
        if self.mail is not None:
            self.mail.poll()
            sample["emails_total"] = self.mail.lines
        self.samples.append(sample)
