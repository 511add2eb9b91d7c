"""Time-ordered identifiers (UUIDv7, RFC 9562): sortable by creation, index-friendly."""

from __future__ import annotations

import os
import uuid

from acme_runtime import clock

__all__ = ["uuid7", "uuid7_time_ms"]


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = clock.now_ms() if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)


def uuid7_time_ms(value: uuid.UUID) -> int:
    """The creation time, in Unix milliseconds, that a UUIDv7 carries."""
    return value.int >> 80
