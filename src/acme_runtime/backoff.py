"""The wait between in-process retries: one doubling delay, capped, for every loop that retries.

A read loop that lost Redis, the receipts consumer that lost PostgreSQL, the supervisor
restarting a crashed actor and `retry_outages` all wait the same way: a short first delay that
doubles after each failure up to a cap, and starts over after a success. This module owns that
schedule. How long a failed e-mail waits before another delivery is not in-process: it is data
(`claim_due.lua`, the notifier's backoff settings).
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Delays of `first_s`, doubling up to `max_s`; `reset()` after a success starts over."""

    def __init__(self, first_s: float, max_s: float) -> None:
        if not 0 <= first_s <= max_s:
            raise ValueError(f"need 0 <= first_s <= max_s, got {first_s} and {max_s}")
        self._first_s = first_s
        self._max_s = max_s
        self._next_s = first_s

    def next_s(self) -> float:
        """The delay to wait now; the one after it is twice as long, up to the cap."""
        delay_s = self._next_s
        self._next_s = min(delay_s * 2, self._max_s)
        return delay_s

    def reset(self) -> None:
        """After a success: the next failure waits the first delay again."""
        self._next_s = self._first_s
