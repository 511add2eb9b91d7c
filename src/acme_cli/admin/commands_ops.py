"""`acme stats` and `acme trace`: each command's handler (the sync edge: input checks, exit
code) next to its flow (connect, gather, render)."""

from __future__ import annotations

import argparse
import asyncio
import uuid

from rich.live import Live

from acme_cli.admin.clients import connect
from acme_cli.admin.edge import Flow, checked, parse_order_id
from acme_cli.admin.errors import NotFound, UsageError
from acme_cli.admin.health import Snapshot, snapshot
from acme_cli.admin.render import Output, render_trace, stats_view
from acme_cli.admin.settings import AdminSettings
from acme_cli.admin.trace import trace_order
from acme_runtime.clock import now_ms

__all__ = ["run_stats", "run_trace", "stats", "trace"]


async def stats(
    settings: AdminSettings, out: Output, *, watch: bool, interval_s: float, count: int | None
) -> int:
    """One snapshot; with `watch`, a new one every `interval_s` (`count` times, or until
    Ctrl-C): redrawn in place on a terminal, one JSON document per line with `--json`."""
    async with connect(settings, redis=True, postgres=True) as clients:

        async def take() -> Snapshot:
            return await snapshot(clients.redis, clients.pool, now_ms(), settings.shards)

        first = await take()
        if not watch:
            if out.as_json:
                out.json(first)
            else:
                out.console.print(stats_view(first))
            return 0
        shown = 0
        if out.as_json:
            current = first
            while True:
                out.json(current, compact=True)
                shown += 1
                if count is not None and shown >= count:
                    return 0
                await asyncio.sleep(interval_s)
                current = await take()
        with Live(stats_view(first), console=out.console, auto_refresh=False) as live:
            shown = 1
            while count is None or shown < count:
                await asyncio.sleep(interval_s)
                live.update(stats_view(await take()))
                live.refresh()
                shown += 1
    return 0


def run_stats(args: argparse.Namespace) -> int:
    def build() -> Flow:
        if args.interval <= 0 or (args.count is not None and args.count < 1):
            raise UsageError("--interval and --count must be greater than 0")
        return lambda s, out: stats(
            s, out, watch=args.watch, interval_s=args.interval, count=args.count
        )

    try:
        return checked(args, build)
    except KeyboardInterrupt:  # how one leaves --watch
        return 0


async def trace(
    settings: AdminSettings, out: Output, *, order_id: uuid.UUID, show_pii: bool
) -> int:
    async with connect(settings, redis=True, postgres=True) as clients:
        found = await trace_order(
            clients.pool, clients.redis, order_id, show_pii=show_pii, shards=settings.shards
        )
    if found is None:
        raise NotFound(f"no order {order_id}")
    if out.as_json:
        out.json(found)
    else:
        render_trace(out, found)
    return 0


def run_trace(args: argparse.Namespace) -> int:
    def build() -> Flow:
        order_id = parse_order_id(args.order_id)
        return lambda s, out: trace(s, out, order_id=order_id, show_pii=args.show_pii)

    return checked(args, build)
