"""The flows of `acme stats` and `acme trace`: connect, gather, render."""

from __future__ import annotations

import asyncio
import uuid

from rich.live import Live

from acme_cli.admin.clients import connect
from acme_cli.admin.errors import NotFound
from acme_cli.admin.render import Output
from acme_cli.admin.render_ops import render_trace, stats_view
from acme_cli.admin.settings import AdminSettings
from acme_cli.admin.stats import snapshot
from acme_cli.admin.trace import trace_order
from acme_runtime.clock import now_ms

__all__ = ["stats", "trace"]


async def stats(
    settings: AdminSettings, out: Output, *, watch: bool, interval_s: float, count: int | None
) -> int:
    """One snapshot; with `watch`, a new one every `interval_s` (`count` times, or until
    Ctrl-C): redrawn in place on a terminal, one JSON document per line with `--json`."""
    async with connect(settings, redis=True, postgres=True) as clients:
        first = await snapshot(clients.redis, clients.pool, now_ms())
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
                current = await snapshot(clients.redis, clients.pool, now_ms())
        with Live(stats_view(first), console=out.console, auto_refresh=False) as live:
            shown = 1
            while count is None or shown < count:
                await asyncio.sleep(interval_s)
                live.update(stats_view(await snapshot(clients.redis, clients.pool, now_ms())))
                live.refresh()
                shown += 1
    return 0


async def trace(
    settings: AdminSettings, out: Output, *, order_id: uuid.UUID, show_pii: bool
) -> int:
    async with connect(settings, redis=True, postgres=True) as clients:
        found = await trace_order(clients.pool, clients.redis, order_id, show_pii=show_pii)
    if found is None:
        raise NotFound(f"no order {order_id}")
    if out.as_json:
        out.json(found)
    else:
        render_trace(out, found)
    return 0
