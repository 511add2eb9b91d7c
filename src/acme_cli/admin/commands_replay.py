"""`acme dead replay` and `acme dead purge`: each command's handler (the sync edge: input
checks, exit code, a second Ctrl-C) next to its flow.

Each flow first selects what it will touch (named ids, which must all exist, or a scan by
reason and time), then, unless `--dry-run`, asks before touching more than a few entries
(`--yes` skips the question), then acts through actions.py, stopping between pages on Ctrl-C.
Nothing is changed when an id is unknown, the question is declined, or `--dry-run` is given.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import msgspec

from acme_cli.admin import actions
from acme_cli.admin.archive import forget_archived, open_archive, select_all
from acme_cli.admin.archive_actions import Acting, purge_archived, replay_archived
from acme_cli.admin.clients import connect
from acme_cli.admin.deadstream import Selected
from acme_cli.admin.edge import (
    Flow,
    ask_terminal,
    checked_write,
    parse_duration_ms,
    since_arg,
    stream_id,
)
from acme_cli.admin.errors import Failure, UsageError
from acme_cli.admin.render import Output, render_outcomes, summary_line
from acme_cli.admin.settings import AdminSettings
from acme_runtime.clock import now_ms

__all__ = ["Ask", "dead_purge", "dead_replay", "run_dead_purge", "run_dead_replay"]

Ask = Callable[[str], bool]


async def _confirm(settings: AdminSettings, ask: Ask, count: int, what: str, yes: bool) -> None:
    if yes or count <= settings.confirm_above:
        return
    if not await asyncio.to_thread(ask, f"{what} {count} dead entries?"):
        raise Failure(
            f"{count} entries selected (more than {settings.confirm_above}): not confirmed, "
            "nothing was changed; answer y at a terminal or pass --yes"
        )


def _report(
    out: Output,
    title: str,
    outcomes: list[actions.Outcome],
    selected: list[Selected],
    *,
    dry: bool,
    replay: bool,
) -> dict[str, int]:
    orders = {s.dead_id: s.order_id for s in selected}
    outcomes = [msgspec.structs.replace(o, order_id=orders.get(o.dead_id)) for o in outcomes]
    summary = dict(Counter(o.status for o in outcomes))
    if out.as_json:
        out.json(
            {"dry_run": dry, "selected": len(selected), "summary": summary, "outcomes": outcomes}
        )
    else:
        render_outcomes(out, title, outcomes, replay=replay)
        out.say(summary_line(summary))
    return summary


def _split(selected: list[Selected]) -> tuple[list[str], list[str]]:
    """The ids in the dead stream, and those in the archive (each acted on its own way)."""
    stream = [s.dead_id for s in selected if s.where != "archive"]
    return stream, [s.dead_id for s in selected if s.where == "archive"]


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
    async with connect(settings, redis=True, postgres_if_up=True) as c:
        archive = open_archive(c, out)
        selected = await select_all(
            c.redis, archive, ids=ids, reasons=reasons, since_ms=since_ms, shards=settings.shards
        )
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
            _report(
                out,
                "Replay plan (dry run: nothing changed)",
                planned,
                selected,
                dry=True,
                replay=True,
            )
            return 0
        await _confirm(settings, ask, len(selected), "Replay", yes)
        stop = asyncio.Event()
        acting = Acting(settings.operator, why, settings.audit_maxlen, stop)
        stream, archived = _split(selected)
        with actions.stop_on_signal(stop, out.note):
            await actions.replay(
                c.redis, stream, cap=cap, force=force, progress=progress, **acting._asdict()
            )
            await forget_archived(archive, progress.outcomes)
            if archive is not None and archived and not progress.stopped:
                await replay_archived(
                    c.redis, archive, archived, cap=cap, force=force, acting=acting,
                    progress=progress,
                )  # fmt: skip
    summary = _report(out, "Replay", progress.outcomes, selected, dry=False, replay=True)
    if summary.get("capped"):
        out.note(f"entries replayed {cap} times already were refused; --force overrides the cap")
    return _stopped(out, progress, selected, "replayed") or (
        0 if set(summary) <= {"replayed"} else 1
    )


def run_dead_replay(args: argparse.Namespace) -> int:
    progress = actions.Progress()

    def build() -> Flow:
        ids = [stream_id(i) for i in args.ids]
        if sum((bool(ids), args.all, bool(args.reason))) != 1:
            raise UsageError("say which entries: dead ids, --all, or --reason CLASS")
        if ids and args.since:
            raise UsageError("--since selects by time; it does not combine with dead ids")
        since_ms = since_arg(args.since)
        return lambda s, out: dead_replay(
            s,
            out,
            ids=ids,
            reasons=args.reason or (),
            since_ms=since_ms,
            dry_run=args.dry_run,
            yes=args.yes,
            force=args.force,
            why=args.why,
            ask=ask_terminal,
            progress=progress,
        )

    return checked_write(args, build, progress, "replayed")


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
    async with connect(settings, redis=True, postgres_if_up=True) as c:
        archive = open_archive(c, out)
        selected = await select_all(
            c.redis, archive, ids=ids, until_ms=until_ms, shards=settings.shards
        )
        if dry_run:
            planned = [actions.Outcome(dead_id=s.dead_id, status="would_purge") for s in selected]
            _report(
                out,
                "Purge plan (dry run: nothing changed)",
                planned,
                selected,
                dry=True,
                replay=False,
            )
            return 0
        await _confirm(settings, ask, len(selected), "Delete", yes)
        stop = asyncio.Event()
        acting = Acting(settings.operator, why, settings.audit_maxlen, stop)
        stream, archived = _split(selected)
        with actions.stop_on_signal(stop, out.note):
            await actions.purge(c.redis, stream, progress=progress, **acting._asdict())
            await forget_archived(archive, progress.outcomes)
            if archive is not None and archived and not progress.stopped:
                await purge_archived(c.redis, archive, archived, acting=acting, progress=progress)
    summary = _report(out, "Purge", progress.outcomes, selected, dry=False, replay=False)
    return _stopped(out, progress, selected, "purged") or (0 if set(summary) <= {"purged"} else 1)


def run_dead_purge(args: argparse.Namespace) -> int:
    progress = actions.Progress()

    def build() -> Flow:
        ids = [stream_id(i) for i in args.ids]
        if bool(ids) == (args.older_than is not None):
            raise UsageError("say which entries: dead ids, or --older-than DURATION")
        until_ms = None
        if args.older_than is not None:
            until_ms = now_ms() - parse_duration_ms(args.older_than)
        return lambda s, out: dead_purge(
            s,
            out,
            ids=ids,
            until_ms=until_ms,
            dry_run=args.dry_run,
            yes=args.yes,
            why=args.why,
            ask=ask_terminal,
            progress=progress,
        )

    return checked_write(args, build, progress, "purged")
