"""The flows of `acme dead list|show|replay|purge`: connect, gather or act, render.

Replay and purge first select what they will touch (named ids, which must all exist, or a scan
by reason and time), then, unless `--dry-run`, ask before touching more than a few entries
(`--yes` skips the question), then act through actions.py. Nothing is changed when an id is
unknown, the question is declined, or `--dry-run` is given.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TypeGuard

import msgspec

from acme_cli.admin import actions
from acme_cli.admin.audit import find_audit
from acme_cli.admin.clients import connect
from acme_cli.admin.deadletters import decode_dead_detail
from acme_cli.admin.deadstream import fetch_dead, list_dead
from acme_cli.admin.errors import Failure, NotFound
from acme_cli.admin.interrupt import stop_on_signal
from acme_cli.admin.parse import ms_to_datetime
from acme_cli.admin.records import ledger_rows, order_record
from acme_cli.admin.render import Output, render_dead_detail, render_dead_list, render_outcomes
from acme_cli.admin.selection import Selected, select_dead
from acme_cli.admin.settings import AdminSettings
from acme_notify.keys import DEAD_STREAM
from acme_notify.streams import now_ms

__all__ = ["dead_list", "dead_purge", "dead_replay", "dead_show"]

Ask = Callable[[str], bool]


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


async def _confirm(settings: AdminSettings, ask: Ask, count: int, what: str, yes: bool) -> None:
    if yes or count <= settings.confirm_above:
        return
    if not await asyncio.to_thread(ask, f"{what} {count} dead entries?"):
        raise Failure(
            f"{count} entries selected (more than {settings.confirm_above}): not confirmed, "
            "nothing was changed; answer y at a terminal or pass --yes"
        )


def _report(
    out: Output, title: str, outcomes: list[actions.Outcome], selected: list[Selected], dry: bool
) -> dict[str, int]:
    orders = {s.dead_id: s.order_id for s in selected}
    outcomes = [msgspec.structs.replace(o, order_id=orders.get(o.dead_id)) for o in outcomes]
    summary = dict(Counter(o.status for o in outcomes))
    if out.as_json:
        out.json(
            {"dry_run": dry, "selected": len(selected), "summary": summary, "outcomes": outcomes}
        )
    else:
        render_outcomes(out, title, outcomes)
        out.say(", ".join(f"{n} {status}" for status, n in summary.items()) or "nothing selected")
    return summary


def _stopped(out: Output, progress: actions.Progress, selected: list[Selected], done: str) -> int:
    """1, with a note of how far the run got, if a signal stopped it; else 0."""
    if not progress.stopped:
        return 0
    left = len(selected) - len(progress.outcomes)
    out.note(
        f"acme: stopped on request: {progress.count(done)} {done}, {left} not touched and still "
        "in the dead stream; run the same command again to carry on"
    )
    return 1


async def dead_replay(
    settings: AdminSettings,
    out: Output,
    *,
    ids: Sequence[str],
    reasons: Collection[str],
    since_ms: int | None,
    dry_run: bool,
    yes: bool,
    force: bool,
    why: str,
    ask: Ask,
    progress: actions.Progress,
) -> int:
    async with connect(settings, redis=True) as clients:
        selected = await select_dead(clients.redis, ids=ids, reasons=reasons, since_ms=since_ms)
        cap = settings.replay_max
        if dry_run:
            planned = [
                actions.Outcome(
                    dead_id=s.dead_id,
                    status="capped" if s.replays >= cap and not force else "would_replay",
                    replays=s.replays,
                )
                for s in selected
            ]
            _report(out, "Replay plan (dry run: nothing changed)", planned, selected, True)
            return 0
        await _confirm(settings, ask, len(selected), "Replay", yes)
        stop = asyncio.Event()
        with stop_on_signal(stop, out.note):
            await actions.replay(
                clients.redis,
                [s.dead_id for s in selected],
                cap=cap,
                force=force,
                who=settings.operator,
                why=why,
                audit_maxlen=settings.audit_maxlen,
                progress=progress,
                stop=stop,
            )
    summary = _report(out, "Replay", progress.outcomes, selected, False)
    if summary.get("capped"):
        out.note(f"entries replayed {cap} times already were refused; --force overrides the cap")
    return _stopped(out, progress, selected, "replayed") or (
        0 if set(summary) <= {"replayed"} else 1
    )


async def dead_purge(
    settings: AdminSettings,
    out: Output,
    *,
    ids: Sequence[str],
    until_ms: int | None,
    dry_run: bool,
    yes: bool,
    why: str,
    ask: Ask,
    progress: actions.Progress,
) -> int:
    async with connect(settings, redis=True) as clients:
        selected = await select_dead(clients.redis, ids=ids, until_ms=until_ms)
        if dry_run:
            planned = [actions.Outcome(dead_id=s.dead_id, status="would_purge") for s in selected]
            _report(out, "Purge plan (dry run: nothing changed)", planned, selected, True)
            return 0
        await _confirm(settings, ask, len(selected), "Delete", yes)
        stop = asyncio.Event()
        with stop_on_signal(stop, out.note):
            await actions.purge(
                clients.redis,
                [s.dead_id for s in selected],
                who=settings.operator,
                why=why,
                audit_maxlen=settings.audit_maxlen,
                progress=progress,
                stop=stop,
            )
    summary = _report(out, "Purge", progress.outcomes, selected, False)
    return _stopped(out, progress, selected, "purged") or (0 if set(summary) <= {"purged"} else 1)
