"""The flows of `acme dead list` and `acme dead show`: connect, read, render. Read-only."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import TypeGuard

import msgspec

from acme_cli.admin.audit import find_audit
from acme_cli.admin.clients import connect
from acme_cli.admin.deadletters import decode_dead_detail
from acme_cli.admin.deadstream import fetch_dead, list_dead
from acme_cli.admin.errors import NotFound
from acme_cli.admin.parse import ms_to_datetime
from acme_cli.admin.records import ledger_rows, order_record
from acme_cli.admin.render import Output, render_dead_detail, render_dead_list
from acme_cli.admin.settings import AdminSettings
from acme_notify.keys import DEAD_STREAM
from acme_runtime.clock import now_ms

__all__ = ["dead_list", "dead_show"]


async def dead_list(
    settings: AdminSettings,
    out: Output,
    *,
    limit: int,
    before: str | None,
    since_ms: int | None,
    reasons: Collection[str],
    show_pii: bool,
) -> int:
    async with connect(settings, redis=True) as clients:
        page = await list_dead(
            clients.redis, limit=limit, before=before, since_ms=since_ms, reasons=reasons
        )
        total = int(await clients.redis.xlen(DEAD_STREAM))
    entries = page.entries if show_pii else [e.masked() for e in page.entries]
    if out.as_json:
        out.json({"total": total, "entries": entries, "next_before": page.next_before})
    else:
        render_dead_list(out, entries, total, page.next_before, ms_to_datetime(now_ms()))
    return 0


async def dead_show(settings: AdminSettings, out: Output, *, dead_id: str, show_pii: bool) -> int:
    async with connect(settings, redis=True, postgres=True) as clients:
        found = await fetch_dead(clients.redis, [dead_id])
        if dead_id not in found:
            raise NotFound(f"no dead entry {dead_id} (`acme dead list` shows the ids)")
        detail = decode_dead_detail(dead_id, found[dead_id])
        e = detail.entry
        record = None
        if e.order_id:
            try:
                record = await order_record(clients.pool, uuid.UUID(e.order_id))
            except ValueError:  # a poison entry's order id may be anything
                record = None
        ledger = await ledger_rows(clients.pool, [e.event_id]) if _is_uuid(e.event_id) else []
        since = e.first_attempt_at or e.dead_at
        audit, _truncated = await find_audit(
            clients.redis, since_ms=int(since.timestamp() * 1000), event_ids={e.event_id or "-"}
        )
    if not show_pii:
        detail = detail.masked()
    order = None
    if record is not None:
        o = record["order"]
        order = {
            "status": o["notification_status"],
            "attempts": o["delivery_attempts"],
            "timeline": record["timeline"],
        }
    if out.as_json:
        document = msgspec.to_builtins(detail) | {
            "order": order,
            "ledger": ledger[0] if ledger else None,
            "audit": audit,
        }
        out.json(document)
    else:
        now = ms_to_datetime(now_ms())
        render_dead_detail(out, detail, order, ledger[0] if ledger else None, audit, now)
    return 0


def _is_uuid(value: str | None) -> TypeGuard[str]:
    try:
        uuid.UUID(value or "")
    except ValueError:
        return False
    return True
