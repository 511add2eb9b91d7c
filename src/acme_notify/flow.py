"""Flow control in front of the SMTP relay: a rate limit, a circuit breaker, a storm detector.

This module owns `TokenBucket` (how fast this replica may hand messages to the relay),
`CircuitBreaker` (whether to try the relay at all while it looks down) and `RefusalStorm`
(whether "permanent" refusals are in fact the relay refusing us). All keep time on the
event loop's monotonic clock; none does any I/O. Sharing the breaker's state between
replicas (e.g. via Redis) is the caller's job, through `force_open`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker", "RefusalStorm", "TokenBucket"]

BreakerState = Literal["closed", "open", "half_open"]


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class TokenBucket:
    """At most `rate_per_s` tokens per second on average, up to `burst` at once; 0 = unlimited.

    Implemented as GCRA (a virtual-scheduling token bucket): each `acquire` reserves the next
    free slot at call time and sleeps until it. That makes it first-come-first-served (callers
    wake in reservation order) and O(1): no lock, no polling loop, no per-waiter bookkeeping.
    """

    def __init__(
        self, rate_per_s: float, burst: int = 1, *, clock: Callable[[], float] | None = None
    ) -> None:
        if rate_per_s < 0:
            raise ValueError(f"rate_per_s must be >= 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock or _loop_time
        self._interval_s = 1.0 / rate_per_s if rate_per_s else 0.0
        # Theoretical arrival time of the next token; -inf means "bucket full".
        self._next_at = float("-inf")

    def reserve(self) -> float:
        """Take the next token now and return how long (seconds) to wait before using it."""
        if not self._interval_s:
            return 0.0
        now = self._clock()
        next_at = max(self._next_at, now)
        self._next_at = next_at + self._interval_s
        # The first `burst` reservations after an idle spell fall within the allowance.
        return max(0.0, next_at - now - (self.burst - 1) * self._interval_s)

    async def acquire(self) -> None:
        """Wait for a token. A cancelled waiter's slot is not refunded (the rate errs low)."""
        wait_s = self.reserve()
        if wait_s > 0:
            await asyncio.sleep(wait_s)


class CircuitBreaker:
    """closed → open after `failure_threshold` consecutive server-down failures; open → half-open
    once the cooldown passed (one probe allowed); the probe's outcome closes or re-opens it, and
    every re-open doubles the cooldown up to `max_cooldown_s` (default: 8 times `cooldown_s`).
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        *,
        max_cooldown_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be > 0, got {cooldown_s}")
        self.failure_threshold = failure_threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max(cooldown_s, max_cooldown_s or 8 * cooldown_s)
        self.cooldown_s = cooldown_s  # the current one; grows while probes keep failing
        self._clock = clock or _loop_time
        self._state: BreakerState = "closed"
        self._failures = 0
        self._open_until = 0.0
        self._probe_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """The state as of now: an expired "open" already reads "half_open"."""
        if self._state == "open" and self._clock() >= self._open_until:
            return "half_open"
        return self._state

    @property
    def open_until(self) -> float:
        """Loop time until which the breaker refuses (meaningful while not closed)."""
        return self._open_until

    def allow(self) -> bool:
        """May a send go to the relay now? In half-open, True for exactly one probe."""
        if self._state == "closed":
            return True
        now = self._clock()
        if self._state == "open":
            if now < self._open_until:
                return False
            self._state = "half_open"
        # A probe whose caller never reported back (cancelled, crashed) must not wedge the
        # breaker in half-open forever: after one cooldown another probe may go.
        started = self._probe_started_at
        if started is not None and now - started < self.cooldown_s:
            return False
        self._probe_started_at = now
        return True

    @property
    def probing(self) -> bool:
        """A half-open probe is out and has not reported back (nor timed out) yet."""
        started = self._probe_started_at
        return (
            self._state == "half_open"
            and started is not None
            and self._clock() - started < self.cooldown_s
        )

    def release(self) -> None:
        """Let the next send probe at once (e.g. another replica's probe found the relay well):
        an open breaker becomes half-open now; closed or half-open ones are left alone."""
        if self._state == "open":
            self._open_until = self._clock()

    def record_success(self) -> None:
        """The relay accepted a message (or answered at all: it is up)."""
        if self._state == "half_open":
            self._close()
        elif self._state == "closed":
            self._failures = 0
        # While open, a straggler that started before the breaker opened proves little;
        # only the half-open probe decides.

    def record_failure(self, server_down: bool) -> None:
        """A send failed; only server-down failures count toward opening."""
        if not server_down:
            # The relay answered (e.g. 550, 451): it is reachable, which is all we track.
            self.record_success()
            return
        if self._state == "half_open":
            self._open(self._clock() + self._grow_cooldown())
        elif self._state == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open(self._clock() + self.cooldown_s)

    def force_open(self, until: float) -> None:
        """Open until loop time `until` (e.g. another replica saw the relay down); never
        shortens an open period already in force."""
        self._open(max(until, self._open_until) if self._state == "open" else until)

    def _grow_cooldown(self) -> float:
        self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
        return self.cooldown_s

    def _open(self, until: float) -> None:
        self._state = "open"
        self._open_until = until
        self._probe_started_at = None

    def _close(self) -> None:
        self._state = "closed"
        self._failures = 0
        self.cooldown_s = self.base_cooldown_s
        self._probe_started_at = None


class RefusalStorm:
    """Tells a misconfigured relay from genuine bounces.

    A relay that refuses *us* (relay access, sender domain, credentials) usually says so in
    words `acme_notify.replies` recognises; when it does not, it still gives the same refusal to
    every recipient. A refusal (by `refusal_key`) is a storm once it was given to at least
    `min_recipients` different recipients within `window_s` **and** makes up at least
    `min_share` of the last `2 * min_recipients` send outcomes: the relay is refusing us, not
    them. Genuine bounces (a few percent of recipients, each for its own reason or the same
    "mailbox unknown") almost never reach the share, and when they do for a moment, the one
    bounce caught is only retried later. No I/O; time from the event loop's monotonic clock.
    """

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        min_recipients: int = 5,
        min_share: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if window_s <= 0 or min_recipients < 1 or not 0 < min_share <= 1:
            raise ValueError("need window_s > 0, min_recipients >= 1 and 0 < min_share <= 1")
        self.window_s = window_s
        self.min_recipients = min_recipients
        self.min_share = min_share
        self._clock = clock or _loop_time
        # The latest outcomes: a refusal's key, or None for an accepted send.
        self._recent: deque[str | None] = deque(maxlen=2 * min_recipients)
        # (time, key, recipient) of the refusals within the window, oldest first.
        self._refusals: deque[tuple[float, str, str]] = deque()
        self._by_key: dict[str, Counter[str]] = {}

    def accepted(self) -> None:
        """A send was accepted."""
        self._recent.append(None)

    def refused(self, key: str, recipient: str) -> int:
        """A send met the permanent refusal `key`; returns how many different recipients met
        it in the window when that makes a storm, else 0."""
        now = self._clock()
        self._forget_before(now - self.window_s)
        self._recent.append(key)
        self._refusals.append((now, key, recipient))
        recipients = self._by_key.setdefault(key, Counter())
        recipients[recipient] += 1
        share = self._recent.count(key) / len(self._recent)
        if len(recipients) >= self.min_recipients and share >= self.min_share:
            return len(recipients)
        return 0

    def _forget_before(self, oldest: float) -> None:
        refusals = self._refusals
        while refusals and refusals[0][0] < oldest:
            _at, key, recipient = refusals.popleft()
            counts = self._by_key[key]
            counts[recipient] -= 1
            if counts[recipient] <= 0:
                del counts[recipient]
            if not counts:
                del self._by_key[key]
