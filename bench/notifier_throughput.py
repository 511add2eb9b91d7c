"""Notifier throughput: e-mails/s ONE `acme notifier` replica sends, and its CPU per e-mail.

Starts embedded PostgreSQL (migrated: the send ledger needs its schema) and Redis
(bench/stack.py) and the recording SMTP sink as its own process (bench/sink_recorder.py), then
pre-loads the events stream with `--events` synthetic order events, published in pipelined
batches through the real `acme_orders.publisher.publish_batch` (no API, no relay). Only then it
starts one `acme notifier` (ACME_NOTIFY_CONCURRENCY=`--concurrency`,
ACME_SMTP_POOL_SIZE=`--pool-size`) and times it until the sink has received every e-mail (at
most `--timeout-s`).

Rates and CPU are taken over the *steady* part: from the first e-mails the sink recorded (the
replica's start-up and imports excluded) to the last. The CPU of each process (notifier, sink,
PostgreSQL, Redis, and this process, which only polls a file) is read with psutil
(bench/cpu.py) at those two moments. With `--profile-s N`, py-spy samples the notifier for N
seconds once it is sending (bench/profiling.py; idle threads left out) and the top functions
by own and by inclusive samples are printed; the raw folded stacks are kept in the data
folder.

Usage: ``.tox/py311/bin/python bench/notifier_throughput.py --events 20000 [--profile-s 10]``
Result: ``bench/results/notifier-throughput-<events>-<timestamp>.json`` (git-ignored).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: make `bench.*` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shlex
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.events import build_envelope, encode_envelope
from acme_orders.publisher import publish_batch
from acme_orders.store import OutboxEvent
from acme_runtime.channels import shards as shards_of
from acme_runtime.ids import uuid7
from bench.cpu import CpuSnapshot, cpu_table, format_cpu_table
from bench.loadgen import install_uvloop, order_body
from bench.monitor import loadavg, nproc
from bench.profiling import hot_spots, start_profile, stop_profile
from bench.stack import (
    RESULTS_DIR,
    MailLog,
    Stack,
    git_revision,
    log_events,
    log_levels,
    log_tail,
    raise_interrupt,
    signals_ignored,
)

MAX_EVENTS: Final = 500_000
MAX_TIMEOUT_S: Final = 3_600.0
MAX_PROFILE_S: Final = 120.0
READY_TIMEOUT_S: Final = 60.0
#: Distinct order bodies cycled through (validating 20,000 e-mail addresses costs seconds).
_DRAFTS: Final = 256
_DEDUPE_TTL_S: Final = 86_400
_POLL_S: Final = 0.1


# --- pre-loading the stream ---------------------------------------------------------------


def _drafts(count: int) -> list[OrderDraft]:
    rng = random.Random(7)
    drafts = []
    for index in range(count):
        draft = parse_order(json.loads(order_body(index, rng)))
        if not isinstance(draft, OrderDraft):
            raise RuntimeError(f"the synthetic order {index} is invalid: {draft}")
        drafts.append(draft)
    return drafts


def synthetic_events(count: int) -> list[OutboxEvent]:
    """`count` events cycling through a few hundred synthetic orders, each to a recipient of
    its own: the notifier's per-recipient cap (ACME_RECIPIENT_MAX_PER_HOUR, 20 by default)
    stays on and is checked for every e-mail, as in production, and holds none of them."""
    drafts = _drafts(min(_DRAFTS, count))
    created_at = datetime.now(UTC)
    events = []
    for index in range(count):
        event_id, order_id = uuid7(), uuid7()
        draft = drafts[index % len(drafts)]
        customer = msgspec.structs.replace(draft.customer, email=f"customer{index}@example.com")
        envelope = build_envelope(
            event_id=str(event_id),
            order_id=str(order_id),
            draft=msgspec.structs.replace(draft, customer=customer),
            created_at=created_at,
            traceparent=None,
        )
        events.append(OutboxEvent(event_id, order_id, encode_envelope(envelope)))
    return events


async def preload(
    redis_url: str, events: list[OutboxEvent], batch: int, shards: int = 1
) -> dict[str, Any]:
    """Publishes the events as the order service does (each to its order's shard of
    `shards`); checks the events streams hold them all."""
    redis = Redis.from_url(redis_url, socket_timeout=30)
    try:
        start = time.perf_counter()
        added = 0
        for offset in range(0, len(events), batch):
            results = await publish_batch(
                redis, events[offset : offset + batch], _DEDUPE_TTL_S, shards=shards
            )
            added += sum(1 for result in results if result.added)
        elapsed_s = time.perf_counter() - start
        length = sum([int(await redis.xlen(on.events)) for on in shards_of(shards)])
    finally:
        await redis.aclose()
    if added != len(events) or length != len(events):
        raise RuntimeError(f"pre-load: {added} added, stream length {length}, not {len(events)}")
    return {
        "events": len(events),
        "batch": batch,
        "seconds": round(elapsed_s, 3),
        "events_per_s": round(len(events) / elapsed_s, 1),
    }


# --- the run ------------------------------------------------------------------------------


@dataclass
class _Run:
    preload: dict[str, Any]
    spawned_unix_s: float
    first: CpuSnapshot
    first_count: int
    last: CpuSnapshot
    last_count: int
    mail: MailLog
    timed_out: bool
    profile: dict[str, Any] | None


async def _run(stack: Stack, args: argparse.Namespace, received: Path) -> _Run:
    await stack.wait_file(received, READY_TIMEOUT_S)
    print(f"building and publishing {args.events} events ...", flush=True)
    events = synthetic_events(args.events)
    wanted = {str(e.order_id) for e in events}
    loaded = await preload(stack.redis_url, events, args.batch, len(stack.stream_shards()))
    del events
    print(f"pre-loaded in {loaded['seconds']:.1f} s; starting one notifier "
          f"(concurrency {args.concurrency}, pool {args.pool_size}) ...", flush=True)  # fmt: skip
    spawned_unix_s = time.time()
    (notifier,) = stack.start_notifiers(1, {
        "ACME_NOTIFY_CONCURRENCY": str(args.concurrency),
        "ACME_SMTP_POOL_SIZE": str(args.pool_size),
    })  # fmt: skip
    roots = stack.roots()
    mail = MailLog(received)
    deadline = time.monotonic() + args.timeout_s
    # Wait for the first e-mails: the replica is up and sending.
    while mail.poll() == 0 and time.monotonic() < deadline:
        stack.raise_if_dead("before sending anything")
        await asyncio.sleep(_POLL_S / 5)
    first, first_count = stack.snapshot(roots, "bench"), mail.lines
    profiler = None
    folded = stack.root / "notifier.folded"
    if args.profile_s > 0:
        profiler = start_profile(notifier.process.pid, args.profile_s, folded, native=args.native)
    print(f"sending; waiting up to {args.timeout_s:g} s for all e-mails ...", flush=True)
    # Bounded by the deadline: one poll per _POLL_S.
    while len(wanted.intersection(mail.first_at)) < len(wanted) and time.monotonic() < deadline:
        stack.raise_if_dead("while sending")
        await asyncio.sleep(_POLL_S)
        mail.poll()
    last, last_count = stack.snapshot(roots, "bench"), mail.lines
    timed_out = len(wanted.intersection(mail.first_at)) < len(wanted)
    profile = None
    if profiler is not None:
        stop_profile(profiler, args.profile_s + 30)
        profile = hot_spots(folded)
        profile["raw_stacks"] = str(folded)
    return _Run(loaded, spawned_unix_s, first, first_count, last, last_count, mail, timed_out,
                profile)  # fmt: skip


def _figures(run: _Run, events: int) -> dict[str, Any]:
    arrivals = sorted(run.mail.first_at.values())
    span_s = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    steady_n = run.last_count - run.first_count
    steady_s = run.last.at_s - run.first.at_s
    notifier_cpu_s = run.last.by_name["notifier-1"] - run.first.by_name["notifier-1"]
    return {
        "events": events,
        "emails_received": run.mail.lines,
        "orders_with_email": len(run.mail.first_at),
        "missing": events - len(run.mail.first_at),
        "duplicates": sum(n - 1 for n in run.mail.copies.values() if n > 1),
        "timed_out": run.timed_out,
        # (n - 1) gaps between the first and the last arrival, by the sink's own clock.
        "emails_per_s": round((len(arrivals) - 1) / span_s, 1) if span_s > 0 else 0.0,
        "emails_per_s_incl_startup": (
            round(len(arrivals) / (arrivals[-1] - run.spawned_unix_s), 1) if arrivals else 0.0
        ),
        "first_email_after_spawn_s": (
            round(arrivals[0] - run.spawned_unix_s, 3) if arrivals else math.nan
        ),
        "steady_window_s": round(steady_s, 3),
        "steady_emails": steady_n,
        "notifier_cpu_ms_per_email": round(notifier_cpu_s * 1000 / max(1, steady_n), 4),
        "notifier_share_of_one_core": round(notifier_cpu_s / max(1e-9, steady_s), 3),
    }


def _format(report: dict[str, Any], result_path: Path) -> str:
    f, cfg, pre = report["figures"], report["config"], report["preload"]
    verdict = "OK" if f["missing"] == 0 and f["duplicates"] == 0 else "NOT OK"
    lines = [
        "",
        f"== notifier throughput: {cfg['events']} events, one replica, concurrency "
        f"{cfg['concurrency']}, SMTP pool {cfg['pool_size']} ==",
        f"command   {report['command']}",
        f"machine   nproc {report['machine']['nproc']}, load avg before "
        f"{report['machine']['loadavg_before']}, after {report['machine']['loadavg_after']}; "
        f"git {report['git']}",
        f"pre-load  {pre['events']} events in {pre['seconds']:.1f} s "
        f"({pre['events_per_s']:.0f}/s, batches of {pre['batch']})",
        f"e-mail    {verdict}: received {f['emails_received']} for {f['orders_with_email']} "
        f"events; missing {f['missing']}, duplicates {f['duplicates']}"
        + (" (TIMED OUT)" if f["timed_out"] else ""),
        f"rate      {f['emails_per_s']:.1f} e-mails/s first to last e-mail; "
        f"{f['emails_per_s_incl_startup']:.1f}/s including start-up (first e-mail "
        f"{f['first_email_after_spawn_s']:.2f} s after spawn)",
        f"notifier  {f['notifier_cpu_ms_per_email']:.3f} CPU-ms per e-mail, "
        f"{f['notifier_share_of_one_core']:.0%} of one core over the steady window",
        *format_cpu_table(report["cpu"], report["machine"]["nproc"]),
    ]
    for name, info in report["logs"].items():
        noisy = {k: v for k, v in info["levels"].items() if k not in ("info", "debug")}
        if noisy:
            lines.append(f"log       {name}: {noisy}; e.g. {info['samples'][:2]}")
        elif name.startswith("notifier"):
            lines.append(f"log       {name}: no warnings/errors; events {info['events']}")
    profile = report["profile"]
    if profile is not None and "error" not in profile:
        lines.append(f"profile   py-spy, {profile['samples']} samples; own samples by package:")
        lines.append(
            "  " + ", ".join(f"{name} {pct:.0f}%" for name, pct in profile["own_by_package_pct"])
        )
        lines.append("          top functions by own samples:")
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in profile["top_own_pct"]]
        lines.append("          top by inclusive samples (event loop frames left out):")
        lines += [f"  {pct:5.1f}%  {name}" for name, pct in profile["top_inclusive_pct"]]
    elif profile is not None:
        lines.append(f"profile   failed: {profile['error']}")
    lines.append(f"logs      {report['data_dir']}/logs")
    lines.append(f"result    {result_path}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="E-mails per second one notifier replica sends to a local SMTP sink."
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64, help="ACME_NOTIFY_CONCURRENCY")
    parser.add_argument("--pool-size", type=int, default=8, help="ACME_SMTP_POOL_SIZE")
    parser.add_argument("--batch", type=int, default=500, help="events per publish pipeline")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--profile-s", type=float, default=0.0, help="py-spy seconds; 0 = off")
    parser.add_argument("--native", action="store_true", help="profile C frames too")
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the databases too (logs always stay)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (
        1 <= args.events <= MAX_EVENTS
        and 0 < args.timeout_s <= MAX_TIMEOUT_S
        and 0 <= args.profile_s <= MAX_PROFILE_S
        and 1 <= args.batch <= 10_000
        and args.concurrency >= 1
        and args.pool_size >= 1
    ):
        print(f"notifier_throughput: events in [1, {MAX_EVENTS}], timeout in (0, "
              f"{MAX_TIMEOUT_S:g}], profile in [0, {MAX_PROFILE_S:g}], batch in [1, 10000]",
              file=sys.stderr)  # fmt: skip
        return 2
    install_uvloop()
    command = shlex.join(sys.orig_argv)
    root = Path(tempfile.mkdtemp(prefix="acme-notifier-tp-"))
    received = root / "received.csv"
    signal.signal(signal.SIGTERM, raise_interrupt)
    stack = Stack(root)
    extra: dict[str, Any] = {
        "command": command,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "nproc": nproc(),
            "python": platform.python_version(),
            "loadavg_before": loadavg(),
        },
        "git": git_revision(),
        "data_dir": str(root),
    }
    print(f"starting PostgreSQL, Redis and the sink in {root} ...", flush=True)
    try:
        stack.start_servers()
        stack.start_recorder_sink(received)
        run = asyncio.run(_run(stack, args, received))
        extra["machine"]["loadavg_after"] = loadavg()
    except KeyboardInterrupt:
        print("\nnotifier_throughput: interrupted; stopping ...", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report, then stop the stack below
        print(f"notifier_throughput: failed: {exc}", file=sys.stderr)
        for child in stack.children:
            print(f"--- {child.log_path}\n{log_tail(child.log_path, 10)}", file=sys.stderr)
        return 1
    finally:
        with signals_ignored():
            stack.stop()
            if not args.keep_data:
                stack.remove_data()
    acme_env = {k: v for k, v in os.environ.items() if k.startswith("ACME_") and "URL" not in k}
    report = {
        **extra,
        "config": {
            "events": args.events,
            "concurrency": args.concurrency,
            "pool_size": args.pool_size,
            "batch": args.batch,
            "timeout_s": args.timeout_s,
            "acme_env": acme_env,
        },
        "preload": run.preload,
        "figures": _figures(run, args.events),
        # From the first e-mails the sink recorded to the last: the steady part.
        "cpu": cpu_table(run.first, run.last, run.last_count - run.first_count, unit="email"),
        "logs": {
            c.name: {
                "levels": (levels := log_levels(c.log_path))[0],
                "samples": levels[1],
                "events": log_events(c.log_path),
            }
            for c in stack.children
        },
        "profile": run.profile,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    result_path = args.out / f"notifier-throughput-{args.events}-{stamp}.json"
    result_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(_format(report, result_path))
    f = report["figures"]
    return 0 if f["missing"] == 0 and f["duplicates"] == 0 and not f["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
