"""The audit trail of operator actions on the dead stream, read back.

replay_dead.lua and purge_dead.lua write the records in the same atomic step as the action,
so the trail can never disagree with the streams. This module only decodes and finds them.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.parse import ms_to_datetime
from acme_notify.keys import AUDIT_STREAM

__all__ = ["AuditRecord", "decode_audit", "find_audit"]

_PAGE = 500


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    audit_id: str
    action: str
    at: datetime
    who: str
    why: str
    dead_id: str
    event_id: str | None
    order_id: str | None
    reason_class: str
    #: Replays of the event after this action (a purge keeps the count it had).
    replays: int
    #: The events-stream entry a replay created; None for a purge.
    new_id: str | None
    forced: bool


def decode_audit(audit_id: str, fields: dict[bytes, bytes]) -> AuditRecord:
    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode("utf-8", "replace")

    at_ms = text("at_ms")
    return AuditRecord(
        audit_id=audit_id,
        action=text("action"),
        at=ms_to_datetime(int(at_ms) if at_ms.isdigit() else int(audit_id.partition("-")[0])),
        who=text("who"),
        why=text("why"),
        dead_id=text("dead_id"),
        event_id=text("event_id") or None,
        order_id=text("order_id") or None,
        reason_class=text("reason_class"),
        replays=int(text("replays") or 0),
        new_id=text("new_id") or None,
        forced=text("forced") == "1",
    )


async def find_audit(
    redis: Redis,
    *,
    since_ms: int,
    order_ids: Collection[str] = (),
    event_ids: Collection[str] = (),
    max_scan: int = 50_000,
) -> tuple[list[AuditRecord], bool]:
    """Records since `since_ms` about these orders or events, oldest first, and whether the
    scan stopped at `max_scan` entries before the end (results may then be incomplete)."""
    lower = f"{since_ms}-0"
    found: list[AuditRecord] = []
    scanned = 0
    while scanned < max_scan:
        page: Any = await redis.xrange(AUDIT_STREAM, lower, "+", count=_PAGE)
        for raw_id, fields in page:
            order_id = fields.get(b"order_id", b"").decode()
            event_id = fields.get(b"event_id", b"").decode()
            if order_id in order_ids or event_id in event_ids:
                found.append(decode_audit(raw_id.decode(), fields))
        scanned += len(page)
        if len(page) < _PAGE:
            return found, False
        lower = f"({page[-1][0].decode()}"
    return found, True
