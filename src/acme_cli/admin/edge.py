"""The sync edge of the admin commands, shared by each command module's `run_*` handler.

A handler checks what the operator typed first (a malformed id or duration is one line and exit
code 2, before any connection), reads the settings once, runs the async flow with
`asyncio.run`, and turns an `AdminError` into its one line and exit code. A configuration
error (SettingsError) is left to `acme`'s main, which owns exit code 3.

The parsers of what an operator types (stream ids, order ids, durations, points in time) are
pure functions; each raises `UsageError` with a message that says what was expected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

from acme_cli.admin.actions import Progress
from acme_cli.admin.errors import AdminError, UsageError
from acme_cli.admin.render import Output
from acme_cli.admin.settings import AdminSettings
from acme_runtime.channels import MAX_SHARDS, qualify
from acme_runtime.clock import now_ms

__all__ = [
    "Flow",
    "ask_terminal",
    "checked",
    "checked_write",
    "parse_duration_ms",
    "parse_order_id",
    "parse_since",
    "since_arg",
    "stream_id",
]

Flow = Callable[[AdminSettings, Output], Coroutine[Any, Any, int]]

_STREAM_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")
_SHARD: Final = re.compile(r"\d{1,3}")
_DURATION: Final = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNIT_MS["w"] = 7 * _UNIT_MS["d"]


def stream_id(text: str) -> str:
    """An entry's name across shards, as `acme dead list` shows it: `<ms>-<seq>` on shard 0,
    `<shard>/<ms>-<seq>` on another (acme_runtime.channels.qualify). Returned in that same
    canonical form (`0/<id>` becomes the bare id)."""
    value = text.strip()
    prefix, slash, entry_id = value.rpartition("/")
    if not _STREAM_ID.fullmatch(entry_id):
        raise UsageError(
            f"{text!r} is not a stream id (expected [<shard>/]<ms>-<seq>, e.g. 1714557600000-0 "
            "or 3/1714557600000-0)"
        )
    if slash and not (_SHARD.fullmatch(prefix) and int(prefix) < MAX_SHARDS):
        raise UsageError(
            f"{text!r}: {prefix!r} before '/' is not a shard (expected a number 0..{MAX_SHARDS - 1}"
            ", e.g. 3/1714557600000-0)"
        )
    return qualify(int(prefix or 0), entry_id)


def parse_order_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise UsageError(f"{text!r} is not an order id (expected a UUID)") from None


def parse_duration_ms(text: str) -> int:
    """`90s`, `15m`, `2h`, `7d`, `1h30m` -> milliseconds."""
    value = text.strip().lower()
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise UsageError(f"{text!r} is not a duration (e.g. 90s, 15m, 2h, 7d, 1h30m)")
    return sum(int(number) * _UNIT_MS[unit] for number, unit in parts)


def parse_since(text: str, now_ms: int) -> int:
    """A duration back from now (`2h`) or an ISO 8601 time (`2024-05-01T10:00Z`), as Unix ms.

    A time without a zone is taken as UTC: operators read UTC everywhere in this tool.
    """
    with contextlib.suppress(UsageError):
        return now_ms - parse_duration_ms(text)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{text!r} is neither a duration (2h, 30m) nor an ISO 8601 time (2024-05-01T10:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def checked(args: argparse.Namespace, build: Callable[[], Flow]) -> int:
    """Builds the flow (validating input), then runs it; errors become one line + exit code."""
    try:
        flow = build()
        out = Output(as_json=bool(getattr(args, "json", False)))
        return asyncio.run(flow(AdminSettings.from_env(), out))
    except AdminError as exc:
        print(f"acme: {exc}", file=sys.stderr)
        return exc.exit_code


def ask_terminal(question: str) -> bool:
    """y/N at a terminal (asked on stderr, so JSON on stdout stays clean); a pipe is a no."""
    if not sys.stdin.isatty():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def since_arg(text: str | None) -> int | None:
    """`--since` as Unix ms, or None when not given."""
    return None if text is None else parse_since(text, now_ms())


def checked_write(
    args: argparse.Namespace, build: Callable[[], Flow], progress: Progress, done: str
) -> int:
    """`checked` for a replay or purge: if a second Ctrl-C left at once, exit code 1 and how
    far the run got (`done` is the status of an entry it has dealt with)."""
    try:
        return checked(args, build)
    except KeyboardInterrupt:
        # The page in flight may have done more than was confirmed.
        print(
            f"acme: interrupted: at least {progress.count(done)} {done}; each entry is either "
            "done or still in the dead stream, never both: run the same command again to carry on",
            file=sys.stderr,
        )
        return 1
