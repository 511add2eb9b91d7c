"""Wall-clock time in Unix milliseconds: the unit of Redis stream ids, receipts and UUIDv7s.

Ages measured from a stream entry's id, the `at_ms` of a receipt and the time a dead letter
died all compare against this one clock reading.
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """The current Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000
