"""The gate in front of SMTP: rate limit, circuit breaker, and the breaker shared by replicas.

`Delivery.send` is the processor's `Sender`. When SMTP is down, or refuses *us* (a
`ProviderError`: relay access, HELO, credentials, sender domain, TLS; or the same permanent
refusal for most recipients, which `RefusalStorm` spots), the breaker opens after a few such
failures; the replica then stops reading and claiming (`capacity()` is 0), so entries wait in
the stream without burning delivery counts, and it publishes the open state in Redis so every
replica backs off together (`BreakerSync`). After the cooldown one probe goes through; its
success closes the breaker and the backlog drains, with no operator action.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog
from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_notify.errors import CircuitOpen, PermanentError, ProviderError, TransientError
from acme_notify.flow import CircuitBreaker, RefusalStorm, TokenBucket
from acme_notify.keys import BREAKER_KEY
from acme_notify.replies import refusal_key
from acme_notify.smtp import SmtpPool
from acme_runtime.actors import PeriodicActor

__all__ = ["BreakerSync", "Delivery"]

log = structlog.get_logger(__name__)

#: The shared breaker key's value says which way it went: "open:<consumer>" while one replica
#: holds the relay for down, "closed:<consumer>" for a moment after one found it well again.
_OPEN: Final = "open:"
_CLOSED: Final = "closed:"
_CLOSED_TTL_MS: Final = 10_000


class Delivery:
    def __init__(
        self,
        pool: SmtpPool,
        breaker: CircuitBreaker,
        redis: Redis,
        *,
        consumer: str,
        rate: TokenBucket | None = None,
        storm: RefusalStorm | None = None,
    ) -> None:
        self.pool = pool
        self.breaker = breaker
        self._storm = storm or RefusalStorm()
        self._redis = redis
        self._consumer = consumer
        self._rate = rate
        self.shared_open_published = 0

    def capacity(self, free_slots: int) -> int:
        """How many entries may be taken now: none while open, one probe while half-open (and
        none while that probe is out)."""
        state = self.breaker.state
        if state == "open" or self.breaker.probing:
            return 0
        if state == "half_open":
            return min(free_slots, 1)
        return free_slots

    async def send(self, sender: str, recipients: list[str], data: bytes) -> str:
        if not self.breaker.allow():
            raise CircuitOpen
        trace.get_current_span().set_attributes(
            {"server.address": self.pool.config.host, "server.port": self.pool.config.port}
        )
        if self._rate is not None:
            await self._rate.acquire()
        # Any other exception (a defect of ours) says nothing about the server either way.
        try:
            reply = await self.pool.send(sender, recipients, data)
        except TransientError as exc:
            if exc.server_down:
                await self._failed(exc)
            else:  # a 4xx about this message: the server is up and answering
                await self._server_answered()
            raise
        except PermanentError as exc:
            key = refusal_key(exc.reason)
            storm = self._storm.refused(key, recipients[0])
            if storm:
                # The same refusal for most recipients: the relay refuses us, not them.
                # Inferred, not certain: the try is not given back, so a relay that only
                # seems to refuse us can hold an e-mail no longer than its retry budget.
                provider = ProviderError(
                    f"{exc.reason} (the same refusal for {storm} recipients within "
                    f"{self._storm.window_s:g} s: treated as the relay refusing us)",
                    refund=False,
                    storm_key=key,
                )
                await self._failed(provider)
                raise provider from exc
            # An answer about this recipient proves the server is up.
            await self._server_answered()
            raise
        await self._server_answered()
        self._storm.accepted()
        return reply

    async def _server_answered(self) -> None:
        was_closed = self.breaker.state == "closed"
        self.breaker.record_success()
        if not was_closed and self.breaker.state == "closed":
            # Tell the other replicas at once, rather than let them sit out their cooldown.
            log.info("smtp_circuit_closed")
            try:
                await self._redis.set(BREAKER_KEY, f"{_CLOSED}{self._consumer}", px=_CLOSED_TTL_MS)
            except (RedisError, OSError) as exc:
                log.warning("smtp_circuit_share_failed", error=repr(exc))

    async def _failed(self, exc: TransientError) -> None:
        """The server is down or refuses us (`exc.server_down`)."""
        was_open = self.breaker.state == "open"
        self.breaker.record_failure(server_down=True)
        if not was_open and self.breaker.state == "open":
            await self._publish_open(exc)

    async def _publish_open(self, cause: TransientError) -> None:
        cooldown_ms = max(1, int(self.breaker.cooldown_s * 1000))
        # What the relay said goes into the log line an operator reads first.
        log.warning(
            "smtp_circuit_opened",
            cooldown_s=self.breaker.cooldown_s,
            reason_class=cause.reason_class,
            reason=cause.reason,
        )
        try:
            await self._redis.set(BREAKER_KEY, f"{_OPEN}{self._consumer}", px=cooldown_ms)
            self.shared_open_published += 1
        except (RedisError, OSError) as exc:
            log.warning("smtp_circuit_share_failed", error=repr(exc))

    async def sync_shared(self) -> None:
        """Opens the local breaker while another replica reports SMTP down, and lets it probe
        at once when another replica's probe found SMTP well again."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(BREAKER_KEY)
            pipe.pttl(BREAKER_KEY)
            raw, ttl_ms = await pipe.execute()
        value = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if value.startswith(_CLOSED):
            if self.breaker.state == "open":
                self.breaker.release()
                log.info("smtp_circuit_released_by_peer", peer=value.removeprefix(_CLOSED))
        elif ttl_ms > 0 and self.breaker.state == "closed":
            until = asyncio.get_running_loop().time() + ttl_ms / 1000
            self.breaker.force_open(until)
            log.info("smtp_circuit_opened_by_peer", for_s=ttl_ms / 1000)


class BreakerSync(PeriodicActor):
    def __init__(self, delivery: Delivery, interval_s: float = 0.5) -> None:
        super().__init__("breaker-sync", self._tick, interval_s)
        self._delivery = delivery

    async def _tick(self) -> bool:
        await self._delivery.sync_shared()
        return False
