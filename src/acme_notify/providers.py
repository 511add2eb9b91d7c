"""One SMTP provider as a notifier replica sees it, and the breaker state it shares with the
other replicas.

A `Provider` is a relay with its own connection pool, rate limit, circuit breaker and storm
detector: `primary` (`ACME_SMTP_URL`) and, when configured, `fallback`
(`ACME_SMTP_FALLBACK_URL`). Each provider's breaker is shared through its own Redis key, so every
replica stops sending to a provider together and, once one replica's probe finds it well
again, every replica may probe it at once instead of sitting out its cooldown.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_notify.errors import TransientError
from acme_notify.flow import CircuitBreaker, RefusalStorm, TokenBucket
from acme_notify.keys import breaker_key
from acme_notify.smtp import SmtpPool
from acme_runtime.text import as_text

__all__ = ["FALLBACK", "PRIMARY", "Accepted", "Provider"]

log = structlog.get_logger(__name__)

PRIMARY: Final = "primary"
FALLBACK: Final = "fallback"

#: The shared key's value says which way it went: "open:<consumer>" while one replica holds the
#: provider for down, "closed:<consumer>" for a moment after one found it well again.
_OPEN: Final = "open:"
_CLOSED: Final = "closed:"
_CLOSED_TTL_MS: Final = 10_000

Route = Literal["closed", "probe", "none"]


class Accepted(NamedTuple):
    """What a send that succeeded returns: the server's reply and the provider that gave it."""

    reply: str
    provider: str


@dataclass(eq=False)
class Provider:
    name: str
    pool: SmtpPool
    breaker: CircuitBreaker
    redis: Redis
    consumer: str
    storm: RefusalStorm = field(default_factory=RefusalStorm)
    rate: TokenBucket | None = None
    #: Since when (time.monotonic) the breaker has not been closed; None while it is. Failed
    #: half-open probes do not restart it: it measures the whole incident.
    down_since: float | None = None

    def route(self) -> Route:
        """Whether sends may go here now: all of them, one probe, or none."""
        state = self.breaker.state
        if state == "closed":
            return "closed"
        if state == "half_open" and not self.breaker.probing:
            return "probe"
        return "none"

    async def answered(self) -> None:
        """The provider answered (accepted, or refused one message): it is up."""
        was_closed = self.breaker.state == "closed"
        self.breaker.record_success()
        if not was_closed and self.breaker.state == "closed":
            down_for_s = time.monotonic() - self.down_since if self.down_since else 0.0
            self.down_since = None
            log.info("smtp_circuit_closed", provider=self.name, down_for_s=round(down_for_s, 1))
            await self._share(f"{_CLOSED}{self.consumer}", _CLOSED_TTL_MS)

    async def failed(self, cause: TransientError) -> None:
        """The provider is down, or refuses us (`cause.server_down`)."""
        was_open = self.breaker.state == "open"
        self.breaker.record_failure(server_down=True)
        if not was_open and self.breaker.state == "open":
            self._note_down()
            # What the relay said goes into the log line an operator reads first.
            log.warning(
                "smtp_circuit_opened",
                provider=self.name,
                cooldown_s=self.breaker.cooldown_s,
                reason_class=cause.reason_class,
                reason=cause.reason,
            )
            cooldown_ms = max(1, int(self.breaker.cooldown_s * 1000))
            await self._share(f"{_OPEN}{self.consumer}", cooldown_ms)

    async def sync_shared(self) -> None:
        """Opens the local breaker while another replica reports the provider down, and lets it
        probe at once when another replica's probe found the provider well again."""
        key = breaker_key(self.name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            raw, ttl_ms = await pipe.execute()
        value = as_text(raw or "")
        if value.startswith(_CLOSED):
            if self.breaker.state == "open":
                self.breaker.release()
                log.info(
                    "smtp_circuit_released_by_peer",
                    provider=self.name,
                    peer=value.removeprefix(_CLOSED),
                )
        elif ttl_ms > 0 and self.breaker.state == "closed":
            until = asyncio.get_running_loop().time() + ttl_ms / 1000
            self.breaker.force_open(until)
            self._note_down()
            log.info("smtp_circuit_opened_by_peer", provider=self.name, for_s=ttl_ms / 1000)

    def _note_down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    async def _share(self, value: str, ttl_ms: int) -> None:
        try:
            await self.redis.set(breaker_key(self.name), value, px=ttl_ms)
        except (RedisError, OSError) as exc:
            log.warning("smtp_circuit_share_failed", provider=self.name, error=repr(exc))
