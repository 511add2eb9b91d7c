"""The sync edge of the admin commands: from parsed arguments to an exit code.

Each handler checks what the operator typed first (a malformed id or duration is one line and
exit code 2, before any connection), reads the settings once, runs the async flow with
`asyncio.run`, and turns an `AdminError` into its one line and exit code. A configuration
error (SettingsError) is left to `acme`'s main, which owns exit code 3.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from acme_cli.admin import commands_dead, commands_ops, commands_replay
from acme_cli.admin.actions import Progress
from acme_cli.admin.errors import AdminError, UsageError
from acme_cli.admin.parse import parse_duration_ms, parse_order_id, parse_since, stream_id
from acme_cli.admin.render import Output
from acme_cli.admin.settings import AdminSettings
from acme_runtime.clock import now_ms

__all__ = ["dead_list", "dead_purge", "dead_replay", "dead_show", "stats", "trace"]

Flow = Callable[[AdminSettings, Output], Coroutine[Any, Any, int]]


def _checked(args: argparse.Namespace, build: Callable[[], Flow]) -> int:
    """Builds the flow (validating input), then runs it; errors become one line + exit code."""
    try:
        flow = build()
        out = Output(as_json=bool(getattr(args, "json", False)))
        return asyncio.run(flow(AdminSettings.from_env(), out))
    except AdminError as exc:
        print(f"acme: {exc}", file=sys.stderr)
        return exc.exit_code


def _ask(question: str) -> bool:
    """y/N at a terminal (asked on stderr, so JSON on stdout stays clean); a pipe is a no."""
    if not sys.stdin.isatty():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _since(text: str | None) -> int | None:
    return None if text is None else parse_since(text, now_ms())


def _interrupted(progress: Progress, done: str) -> int:
    # Left at once (a second Ctrl-C): the page in flight may have done more than was confirmed.
    print(
        f"acme: interrupted: at least {progress.count(done)} {done}; each entry is either done "
        "or still in the dead stream, never both: run the same command again to carry on",
        file=sys.stderr,
    )
    return 1


def dead_list(args: argparse.Namespace) -> int:
    def build() -> Flow:
        if not 1 <= args.limit <= 10_000:
            raise UsageError(f"--limit must be between 1 and 10000, got {args.limit}")
        before = None if args.before is None else stream_id(args.before)
        since_ms = _since(args.since)
        return lambda s, out: commands_dead.dead_list(
            s,
            out,
            limit=args.limit,
            before=before,
            since_ms=since_ms,
            reasons=args.reason or (),
            show_pii=args.show_pii,
        )

    return _checked(args, build)


def dead_show(args: argparse.Namespace) -> int:
    def build() -> Flow:
        dead_id = stream_id(args.id)
        return lambda s, out: commands_dead.dead_show(
            s, out, dead_id=dead_id, show_pii=args.show_pii
        )

    return _checked(args, build)


def dead_replay(args: argparse.Namespace) -> int:
    progress = Progress()

    def build() -> Flow:
        ids = [stream_id(i) for i in args.ids]
        if sum((bool(ids), args.all, bool(args.reason))) != 1:
            raise UsageError("say which entries: dead ids, --all, or --reason CLASS")
        if ids and args.since:
            raise UsageError("--since selects by time; it does not combine with dead ids")
        since_ms = _since(args.since)
        return lambda s, out: commands_replay.dead_replay(
            s,
            out,
            ids=ids,
            reasons=args.reason or (),
            since_ms=since_ms,
            dry_run=args.dry_run,
            yes=args.yes,
            force=args.force,
            why=args.why,
            ask=_ask,
            progress=progress,
        )

    try:
        return _checked(args, build)
    except KeyboardInterrupt:
        return _interrupted(progress, "replayed")


def dead_purge(args: argparse.Namespace) -> int:
    progress = Progress()

    def build() -> Flow:
        ids = [stream_id(i) for i in args.ids]
        if bool(ids) == (args.older_than is not None):
            raise UsageError("say which entries: dead ids, or --older-than DURATION")
        until_ms = None
        if args.older_than is not None:
            until_ms = now_ms() - parse_duration_ms(args.older_than)
        return lambda s, out: commands_replay.dead_purge(
            s,
            out,
            ids=ids,
            until_ms=until_ms,
            dry_run=args.dry_run,
            yes=args.yes,
            why=args.why,
            ask=_ask,
            progress=progress,
        )

    try:
        return _checked(args, build)
    except KeyboardInterrupt:
        return _interrupted(progress, "purged")


def stats(args: argparse.Namespace) -> int:
    def build() -> Flow:
        if args.interval <= 0 or (args.count is not None and args.count < 1):
            raise UsageError("--interval and --count must be greater than 0")
        return lambda s, out: commands_ops.stats(
            s, out, watch=args.watch, interval_s=args.interval, count=args.count
        )

    try:
        return _checked(args, build)
    except KeyboardInterrupt:  # how one leaves --watch
        return 0


def trace(args: argparse.Namespace) -> int:
    def build() -> Flow:
        order_id = parse_order_id(args.order_id)
        return lambda s, out: commands_ops.trace(s, out, order_id=order_id, show_pii=args.show_pii)

    return _checked(args, build)
