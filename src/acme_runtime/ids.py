"""Time-ordered identifiers (UUIDv7, RFC 9562): sortable by creation, index-friendly."""

from __future__ import annotations

import os
import uuid
from typing import Final

from acme_runtime import clock

__all__ = ["uuid7", "uuid7_time_ms"]

#: Random bytes taken from the OS per refill: one getrandom() call serves 409 identifiers.
_POOL_BYTES: Final = 4096
_pool = memoryview(b"")


def _forget_pool() -> None:
    """A forked child must not hand out the bytes its parent will hand out too."""
    global _pool
    _pool = memoryview(b"")


os.register_at_fork(after_in_child=_forget_pool)


def _random_10_bytes() -> bytes:
    """10 bytes from the OS's CSPRNG, read in blocks: a system call per id was ~2 % of the
    API's CPU."""
    global _pool
    if len(_pool) < 10:
        _pool = memoryview(os.urandom(_POOL_BYTES))
    taken, _pool = _pool[:10], _pool[10:]
    return taken.tobytes()


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = clock.now_ms() if now_ms is None else now_ms
    rand = int.from_bytes(_random_10_bytes(), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)


def uuid7_time_ms(value: uuid.UUID) -> int:
    """The creation time, in Unix milliseconds, that a UUIDv7 carries."""
    return value.int >> 80
