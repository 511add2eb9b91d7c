"""`acme dead list` and `acme dead show`: each command's handler (the sync edge: input checks,
exit code) next to its flow (connect, read, render). Read-only."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Collection, Sequence
from typing import Any, TypeGuard

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.actions import find_audit
from acme_cli.admin.archive import find_dead, list_all, open_archive
from acme_cli.admin.clients import connect
from acme_cli.admin.deadletters import ms_to_datetime
from acme_cli.admin.edge import Flow, checked, since_arg, stream_id
from acme_cli.admin.errors import NotFound, UsageError
from acme_cli.admin.records import ledger_rows, order_record
from acme_cli.admin.render import Output, render_dead_detail, render_dead_list
from acme_cli.admin.settings import AdminSettings
from acme_runtime.channels import Shard, shard, unqualify
from acme_runtime.clock import now_ms

__all__ = ["dead_list", "dead_show", "run_dead_list", "run_dead_show"]


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
    shards = settings.shards
    async with connect(settings, redis=True, postgres_if_up=True) as c:
        archive = open_archive(c, out)
        page = await list_all(
            c.redis,
            archive,
            limit=limit,
            before=before,
            since_ms=since_ms,
            reasons=reasons,
            shards=shards,
        )
        in_stream = await _dead_length(c.redis, shards)
        in_archive = None if archive is None else await archive.count()
    entries = page.entries if show_pii else [e.masked() for e in page.entries]
    total = in_stream + (in_archive or 0)
    if out.as_json:
        out.json(
            {
                "total": total,
                "in_stream": in_stream,
                "in_archive": in_archive,
                "entries": entries,
                "next_before": page.next_before,
            }
        )
    else:
        now = ms_to_datetime(now_ms())
        render_dead_list(out, entries, total, page.next_before, now, in_archive=in_archive)
    return 0


async def _dead_length(redis: Redis, shards: Sequence[Shard]) -> int:
    """Entries in the shards' dead streams, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for on in shards:
            pipe.xlen(on.dead)
        lengths: list[Any] = await pipe.execute()
    return sum(int(n) for n in lengths)


def run_dead_list(args: argparse.Namespace) -> int:
    def build() -> Flow:
        if not 1 <= args.limit <= 10_000:
            raise UsageError(f"--limit must be between 1 and 10000, got {args.limit}")
        before = None if args.before is None else stream_id(args.before)
        since_ms = since_arg(args.since)
        return lambda s, out: dead_list(
            s,
            out,
            limit=args.limit,
            before=before,
            since_ms=since_ms,
            reasons=args.reason or (),
            show_pii=args.show_pii,
        )

    return checked(args, build)


async def dead_show(settings: AdminSettings, out: Output, *, dead_id: str, show_pii: bool) -> int:
    async with connect(settings, redis=True, postgres=True) as clients:
        detail = await find_dead(clients.redis, open_archive(clients, out), dead_id)
        if detail is None:
            raise NotFound(f"no dead entry {dead_id} (`acme dead list` shows the ids)")
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
            clients.redis,
            since_ms=int(since.timestamp() * 1000),
            event_ids={e.event_id or "-"},
            shards=_with_shard_of(settings.shards, dead_id),
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


def run_dead_show(args: argparse.Namespace) -> int:
    def build() -> Flow:
        dead_id = stream_id(args.id)
        return lambda s, out: dead_show(s, out, dead_id=dead_id, show_pii=args.show_pii)

    return checked(args, build)


def _with_shard_of(shards: tuple[Shard, ...], dead_id: str) -> tuple[Shard, ...]:
    """The shards, and the named entry's even when it is not one of them (an entry left on a
    shard that a smaller ACME_STREAM_SHARDS no longer reads)."""
    on = shard(unqualify(dead_id)[0])
    return shards if on in shards else (*shards, on)


def _is_uuid(value: str | None) -> TypeGuard[str]:
    try:
        uuid.UUID(value or "")
    except ValueError:
        return False
    return True
