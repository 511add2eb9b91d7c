"""Parsing what an operator types: stream ids, order ids, durations and points in time.

Pure functions; each raises `UsageError` with a message that says what was expected.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime
from typing import Final

from acme_cli.admin.errors import UsageError

__all__ = ["ms_to_datetime", "parse_duration_ms", "parse_order_id", "parse_since", "stream_id"]

_STREAM_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")
_DURATION: Final = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNIT_MS["w"] = 7 * _UNIT_MS["d"]


def stream_id(text: str) -> str:
    """A full Redis stream id, `<ms>-<seq>` (what `acme dead list` shows)."""
    value = text.strip()
    if not _STREAM_ID.fullmatch(value):
        raise UsageError(f"{text!r} is not a stream id (expected <ms>-<seq>, e.g. 1714557600000-0)")
    return value


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


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
