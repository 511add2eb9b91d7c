"""The per-key rate limit of the order API: one token bucket per caller, shared by every replica.

Each caller (an API key's id, or the client address when a request carries no key) has a bucket
in Redis (`{acme}:ratelimit:<kind>:<id>`) refilled at `rate_per_s` and holding at most `burst`
requests, taken atomically by lua/rate_limit.lua (GCRA on Redis's clock). A refused request is
answered 429 with `Retry-After`; every answer of a limited route carries the IETF `RateLimit-
Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers), so a client can slow down
before it is refused.

Redis is not needed to take orders (ADR 0014), so it must not become needed here either: when
it does not answer the limiter lets the request through (fails open), counts it in
`acme_api_rate_limit_fail_open_total`, and leaves Redis alone for `pause_s` so that a Redis that
hangs costs one timeout per pause, not one per request. No HTTP here: api.py turns a refusal
into the 429 problem.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_runtime.channels import HASH_TAG
from acme_runtime.lua import load_script

__all__ = ["RATE_LIMIT_PREFIX", "Decision", "Policy", "RateLimiter"]

log = structlog.get_logger(__name__)

#: Prefix of the buckets: `key:<API key id>` or `addr:<client address>` follows.
RATE_LIMIT_PREFIX: Final = f"{HASH_TAG}:ratelimit:"
#: The policy's name in the RateLimit fields.
POLICY_NAME: Final = "per-key"


@dataclass(frozen=True)
class Policy:
    """`rate_per_s` requests per second on average, up to `burst` at once."""

    rate_per_s: float
    burst: int

    @property
    def window_s(self) -> int:
        """The time a full bucket takes to refill: the policy's window (`w`) for `burst`
        requests (`q`), i.e. the same sustained rate."""
        return max(1, math.ceil(self.burst / self.rate_per_s))

    def header(self) -> str:
        """The `RateLimit-Policy` field value."""
        return f'"{POLICY_NAME}";q={self.burst};w={self.window_s}'


@dataclass(frozen=True)
class Decision:
    policy: Policy
    allowed: bool
    #: Requests the caller may still make at once.
    remaining: int
    #: Seconds to wait before the next request can be allowed (0 when allowed).
    retry_after_s: int
    #: Seconds until the bucket is full again.
    full_in_s: int

    def headers(self) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` (and `Retry-After` when refused)."""
        headers = {
            "RateLimit-Policy": self.policy.header(),
            "RateLimit": f'"{POLICY_NAME}";r={self.remaining};t={self.full_in_s}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


def _ceil_s(ms: int) -> int:
    return max(0, math.ceil(ms / 1000))


@dataclass(kw_only=True)
class RateLimiter:
    """Takes requests from the callers' buckets through `redis`, `policy` unless a caller has
    its own; counts refusals in `refused` and requests let through without Redis in
    `fail_open`. After a Redis failure it rests `pause_s` (on `clock`) before asking again."""

    redis: Redis
    policy: Policy
    fail_open: Counter
    refused: Counter
    timeout_s: float = 0.5
    pause_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _resting_until: float = field(default=0.0, init=False)

    async def take(self, caller: str, policy: Policy | None = None) -> Decision | None:
        """Takes one request from `caller`'s bucket (`key:<id>` or `addr:<address>`), under
        `policy` when the caller has its own (else the default); None when Redis did not answer
        and the request goes through unlimited (fail open)."""
        policy = policy or self.policy
        if self.clock() < self._resting_until:
            self.fail_open.inc()
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                allowed, remaining, retry_ms, full_ms = await load_script("rate_limit").run(
                    self.redis,
                    [f"{RATE_LIMIT_PREFIX}{caller}"],
                    [f"{1000.0 / policy.rate_per_s:.3f}", policy.burst],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            # Orders must still be taken: the limit protects the system, it is not the system.
            self._resting_until = self.clock() + self.pause_s
            self.fail_open.inc()
            log.warning("rate_limit_unavailable_failing_open", error=repr(exc))
            return None
        decision = Decision(
            policy=policy,
            allowed=bool(allowed),
            remaining=int(remaining),
            retry_after_s=max(1, _ceil_s(int(retry_ms))) if not allowed else 0,
            full_in_s=_ceil_s(int(full_ms)),
        )
        if not decision.allowed:
            self.refused.inc()
        return decision
