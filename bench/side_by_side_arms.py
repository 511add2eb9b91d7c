"""The four arms of bench/side_by_side.py, each on a fresh system that it always stops.

post (`ours_post`, `peer_post`): the system with its e-mail side running, a warm-up, then
open-loop load (bench/system.py `offer`); the figures of the load, of the e-mails delivered
by its end and after a bounded wait, the backlog at its end and the CPU of every process.
drain (`ours_drain`, `peer_drain`): e-mails queued with nothing consuming, then two workers
started and timed from the sink's record. Ours is bench/stack.py's `Stack`; the peer is a
`Stack` too, holding the processes bench/peer_system.py starts. Both get the same
redis-server build, the same embedded PostgreSQL and the same recording sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil
from redis.asyncio import Redis

from acme_cli.embedded import EmbeddedRedis
from acme_notify.probe import measure_stream
from bench.cpu import OUTSIDE_THE_SYSTEM, CpuSnapshot, cpu_table
from bench.e2e import child_logs, wait_ready
from bench.figures import e2e_figures, orders_of, post_figures
from bench.loadgen import LoadResult
from bench.notifier_throughput import preload, synthetic_events
from bench.peer_system import (
    enqueue,
    queue_length,
    start_peer_api,
    start_peer_servers,
    start_peer_worker,
    wait_peer_ready,
)
from bench.stack import MailLog, Stack
from bench.system import offer

__all__ = ["Config", "ours_drain", "ours_post", "peer_drain", "peer_post"]

_RECEIVED: Final = "received.csv"
_WORKER_READY: Final = "worker.ready"
#: The peer ignores the key; it is sent so both arms' requests have the same shape.
_PEER_API_KEY: Final = "peer-ignores-this-key-0000000000000000000000000"
_PRELOAD_BATCH: Final = 500
_ENQUEUE_TIMEOUT_S: Final = 300.0
_SINK_READY_TIMEOUT_S: Final = 60.0
_POST_DRAIN_TIMEOUT_S: Final = 20.0
_POLL_S: Final = 0.1
_FIRST_POLL_S: Final = 0.02


@dataclass(frozen=True)
class Config:
    rounds: int
    rate_per_s: float
    duration_s: float
    warmup_s: float
    mail_wait_s: float
    drain_emails: int
    drain_timeout_s: float
    notifiers: int
    peer_concurrency: int
    connections: int
    keep_data: bool
    #: The drain's SMTP stand-in: `lean` (bench/lean_sink.py) or `aiosmtpd`.
    drain_sink: str = "lean"


# --- one arm on one fresh system ------------------------------------------------------------


def _new_stack(root: Path, redis_binary: Path) -> Stack:
    stack = Stack(root)
    # The same redis-server build for both arms, with the configuration Stack gives ours.
    stack.redis = EmbeddedRedis(root / "redis", appendonly=True, binary=redis_binary)
    return stack


def _descendants(stack: Stack) -> list[psutil.Process]:
    found = []
    for child in stack.children:
        with contextlib.suppress(psutil.Error):
            found += psutil.Process(child.process.pid).children(recursive=True)
    return found


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) during the block is remembered, not obeyed: the clean-up finishes
    (cut short, the children would be SIGKILLed), then KeyboardInterrupt goes on up."""
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda got, _frame: received.append(got))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt


def _stop(stack: Stack, keep_data: bool) -> None:
    with _interrupts_deferred():
        # Celery's pool processes are the worker's children: any left after it stopped are
        # killed by pid (psutil checks that the pid was not reused since).
        leftovers = _descendants(stack)
        stack.stop()
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if not keep_data:
            stack.remove_data()


def _run_arm(
    stack: Stack,
    start: Callable[[], None],
    body: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    keep_data: bool,
) -> dict[str, Any]:
    """Start the system (main thread, no loop), run `body` in a fresh loop, always stop."""
    try:
        start()
        result = asyncio.run(body())
    finally:
        _stop(stack, keep_data)
    result["logs"] = child_logs(stack)
    result["data_dir"] = str(stack.root)
    return result


def _system_ms(cpu: dict[str, Any]) -> float:
    """CPU-ms per unit (order, e-mail) of the system's processes, PostgreSQL and Redis."""
    rows: dict[str, dict[str, float]] = cpu["by_process"]
    used_s = sum(row["cpu_s"] for name, row in rows.items() if name not in OUTSIDE_THE_SYSTEM)
    units = int(cpu[f"{cpu['unit']}s"])
    return round(used_s * 1000 / max(1, units), 4)


# --- post -----------------------------------------------------------------------------------


def _accepted(loads: list[LoadResult]) -> set[str]:
    return {r.order_id for load in loads for r in load.ok_records if r.order_id}


async def _post(
    stack: Stack,
    cfg: Config,
    api_key: str,
    ready: Callable[[], Awaitable[float]],
    backlog: Callable[[Redis], Awaitable[dict[str, float]]],
) -> dict[str, Any]:
    ready_s = await ready()
    mail = MailLog(stack.root / _RECEIVED)
    redis = Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        if cfg.warmup_s > 0:
            warm = await offer(stack.http_port, cfg.rate_per_s, cfg.warmup_s,
                               f"warmup-{os.getpid()}", 1, connections=cfg.connections,
                               api_key=api_key)  # fmt: skip
            await mail.wait_for(_accepted(warm), cfg.mail_wait_s, stack)
        roots = stack.roots()
        before = stack.snapshot(roots)
        loads = await offer(stack.http_port, cfg.rate_per_s, cfg.duration_s,
                            f"measure-{os.getpid()}", 2, connections=cfg.connections,
                            api_key=api_key, drain_timeout_s=_POST_DRAIN_TIMEOUT_S)  # fmt: skip
        posted = stack.snapshot(roots)
        backlog_at_end = await backlog(redis)
        mail.poll()
        wanted = _accepted(loads)
        at_end = len(wanted.intersection(mail.first_at))
        waited_s = await mail.wait_for(wanted, cfg.mail_wait_s, stack)
        after = stack.snapshot(roots)
    finally:
        await redis.aclose()
    orders = orders_of(loads)
    post = post_figures(orders, loads)
    e2e = e2e_figures(orders, mail)
    cpu = cpu_table(before, after, post["accepted"])
    latency = post["latency_ms"]
    return {
        "ready_s": round(ready_s, 2),
        "post": post,
        "e2e": e2e,
        "backlog_at_end_of_load": backlog_at_end,
        "mail_wait_s": round(waited_s, 2),
        "cpu": cpu,
        "cpu_during_posts": cpu_table(before, posted, post["accepted"]),
        "headline": {
            "post_p50_ms": latency["p50"],
            "post_p99_ms": latency["p99"],
            "post_max_ms": latency["max"],
            "accepted": post["accepted"],
            "not_2xx": post["not_2xx"],
            "errors_no_response": post["errors_no_response"],
            "emails_at_end_of_load": at_end,
            "emails_after_wait": len(wanted.intersection(mail.first_at)),
            "missing_after_wait": e2e["missing"],
            "duplicates": e2e["duplicates"],
            "backlog_at_end_of_load": backlog_at_end["backlog"],
            "e2e_p50_ms": e2e["e2e_ms"]["p50"],
            "e2e_p99_ms": e2e["e2e_ms"]["p99"],
            "cpu_ms_per_order_system": _system_ms(cpu),
            "other_processes_cpu_s": cpu["other_processes_s"],
            **{
                f"cpu_ms_per_order.{name}": row["cpu_ms_per_order"]
                for name, row in cpu["by_process"].items()
            },
        },
    }


async def _ours_backlog(redis: Redis) -> dict[str, float]:
    state = await measure_stream(redis)
    return {"backlog": state["lag"] + state["pending"], "lag": state["lag"],
            "pending": state["pending"]}  # fmt: skip


async def _peer_backlog(redis: Redis) -> dict[str, float]:
    return {"backlog": float(await queue_length(redis))}


def ours_post(root: Path, cfg: Config, redis_binary: Path) -> dict[str, Any]:
    stack = _new_stack(root, redis_binary)

    def start() -> None:
        stack.start_servers()
        stack.start_recorder_sink(root / _RECEIVED)
        stack.start_api()
        stack.start_relay()
        stack.start_notifiers(cfg.notifiers)

    async def body() -> dict[str, Any]:
        return await _post(stack, cfg, stack.api_key,
                           lambda: wait_ready(stack, root / _RECEIVED), _ours_backlog)  # fmt: skip

    return _run_arm(stack, start, body, cfg.keep_data)


def peer_post(root: Path, cfg: Config, redis_binary: Path, python: Path) -> dict[str, Any]:
    stack = _new_stack(root, redis_binary)
    ready_file = root / _WORKER_READY

    def start() -> None:
        start_peer_servers(stack, postgres=True)
        stack.start_recorder_sink(root / _RECEIVED)
        start_peer_api(stack, python)
        start_peer_worker(stack, python, cfg.peer_concurrency, ready_file)

    async def body() -> dict[str, Any]:
        async def ready() -> float:
            return await wait_peer_ready(stack, root / _RECEIVED, api=True,
                                         worker_ready_file=ready_file)  # fmt: skip

        return await _post(stack, cfg, _PEER_API_KEY, ready, _peer_backlog)

    return _run_arm(stack, start, body, cfg.keep_data)


# --- drain ----------------------------------------------------------------------------------


async def _drain(stack: Stack, mail: MailLog, count: int, timeout_s: float,
                 spawned_unix_s: float) -> dict[str, Any]:  # fmt: skip
    """Time the workers just spawned until the sink has `count` e-mails (or the timeout)."""
    roots = stack.roots()
    deadline = time.monotonic() + timeout_s
    # Bounded by the deadline: wait for the first e-mail (start-up and imports left out).
    while mail.poll() == 0 and time.monotonic() < deadline:
        stack.raise_if_dead("before sending anything")
        await asyncio.sleep(_FIRST_POLL_S)
    first = stack.snapshot(roots, "bench")
    first_count = mail.lines
    while len(mail.first_at) < count and time.monotonic() < deadline:
        stack.raise_if_dead("while sending")
        await asyncio.sleep(_POLL_S)
        mail.poll()
    last = stack.snapshot(roots, "bench")
    return _drain_figures(mail, count, spawned_unix_s, first, first_count, last)


def _drain_figures(mail: MailLog, count: int, spawned_unix_s: float, first: CpuSnapshot,
                   first_count: int, last: CpuSnapshot) -> dict[str, Any]:  # fmt: skip
    arrivals = sorted(mail.first_at.values())
    span_s = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    cpu = cpu_table(first, last, max(1, mail.lines - first_count), unit="email")
    delivered = len(arrivals)
    return {
        "cpu": cpu,
        "headline": {
            # (n - 1) gaps between the first and the last arrival, by the sink's clock.
            "emails_per_s": round((delivered - 1) / span_s, 1) if span_s > 0 else 0.0,
            "first_to_last_s": round(span_s, 3),
            "emails_per_s_incl_startup": (
                round(delivered / (arrivals[-1] - spawned_unix_s), 1) if arrivals else 0.0
            ),
            "first_email_after_spawn_s": (
                round(arrivals[0] - spawned_unix_s, 3) if arrivals else float("nan")
            ),
            "delivered": delivered,
            "missing": count - delivered,
            "duplicates": sum(n - 1 for n in mail.copies.values() if n > 1),
            "cpu_ms_per_email_system": _system_ms(cpu),
            **{
                f"cpu_ms_per_email.{name}": row["cpu_ms_per_email"]
                for name, row in cpu["by_process"].items()
            },
        },
    }


def _sink_args(cfg: Config) -> list[str]:
    return ["--lean"] if cfg.drain_sink == "lean" else []


def ours_drain(root: Path, cfg: Config, redis_binary: Path) -> dict[str, Any]:
    stack = _new_stack(root, redis_binary)
    received = root / _RECEIVED

    def start() -> None:
        stack.start_servers()
        stack.start_recorder_sink(received, extra_args=_sink_args(cfg))

    async def body() -> dict[str, Any]:
        await stack.wait_file(received, _SINK_READY_TIMEOUT_S)
        events = synthetic_events(cfg.drain_emails)
        loaded = await preload(stack.redis_url, events, _PRELOAD_BATCH, len(stack.stream_shards()))
        del events
        mail = MailLog(received)
        spawned = time.time()
        stack.start_notifiers(cfg.notifiers)
        result = await _drain(stack, mail, cfg.drain_emails, cfg.drain_timeout_s, spawned)
        return {"queued": loaded, **result}

    return _run_arm(stack, start, body, cfg.keep_data)


def peer_drain(root: Path, cfg: Config, redis_binary: Path, python: Path) -> dict[str, Any]:
    stack = _new_stack(root, redis_binary)
    received = root / _RECEIVED

    queued: dict[str, Any] = {}

    def start() -> None:
        start_peer_servers(stack, postgres=False)
        stack.start_recorder_sink(received, extra_args=_sink_args(cfg))
        started = time.monotonic()
        length = enqueue(stack, python, cfg.drain_emails, _ENQUEUE_TIMEOUT_S)
        queued.update(tasks=cfg.drain_emails, queue_length=length,
                      seconds=round(time.monotonic() - started, 3))  # fmt: skip
        if length != cfg.drain_emails:
            raise RuntimeError(f"queued {cfg.drain_emails} tasks, LLEN celery is {length}")

    async def body() -> dict[str, Any]:
        await wait_peer_ready(stack, received, api=False, worker_ready_file=None)
        mail = MailLog(received)
        spawned = time.time()
        start_peer_worker(stack, python, cfg.peer_concurrency, root / _WORKER_READY)
        result = await _drain(stack, mail, cfg.drain_emails, cfg.drain_timeout_s, spawned)
        return {"queued": queued, **result}

    return _run_arm(stack, start, body, cfg.keep_data)
