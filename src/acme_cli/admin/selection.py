"""Choosing the dead entries a replay or purge will touch, before touching any.

Named ids must all exist (else `NotFound`, and nothing is changed: a typo must not turn into a
partial run); otherwise the dead stream is scanned oldest first through dead_index.lua, by time
window and reason class. Only the few fields the plan needs are kept per entry.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.deadletters import decode_dead_entry
from acme_cli.admin.deadstream import fetch_dead, scan_index
from acme_cli.admin.errors import NotFound

__all__ = ["Selected", "select_dead"]


class Selected(msgspec.Struct, frozen=True, kw_only=True):
    dead_id: str
    order_id: str | None
    reason_class: str
    replays: int


async def select_dead(
    redis: Redis,
    *,
    ids: Sequence[str] = (),
    reasons: Collection[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> list[Selected]:
    """The entries named (all must exist: NotFound otherwise), or those dead in the window
    whose reason class is one of `reasons` (any, when empty), oldest first."""
    if ids:
        found = await fetch_dead(redis, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            more = f" and {len(missing) - 5} more" if missing[5:] else ""
            raise NotFound(f"no dead entry {', '.join(missing[:5])}{more}; nothing was changed")
        return [_selected(i, found[i]) for i in dict.fromkeys(ids)]
    lower = "-" if since_ms is None else f"{since_ms}-0"
    upper = "+" if until_ms is None else str(until_ms - 1)  # <ms> alone: its last sequence
    return [
        Selected(
            dead_id=item.dead_id,
            order_id=item.order_id or None,
            reason_class=item.reason_class,
            replays=item.replays,
        )
        async for item in scan_index(redis, lower=lower, upper=upper)
        if not reasons or item.reason_class in reasons
    ]


def _selected(dead_id: str, fields: dict[bytes, bytes]) -> Selected:
    # envelope={}: the plan needs no e-mail, so the JSON body is not decoded.
    entry = decode_dead_entry(dead_id, fields, envelope={})
    return Selected(
        dead_id=dead_id,
        order_id=entry.order_id,
        reason_class=entry.reason_class,
        replays=entry.replays,
    )
