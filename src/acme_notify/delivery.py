"""The gate in front of SMTP: which provider a send goes to, and whether any may be tried.

`Delivery.send` is the processor's `Sender`. It routes each send to the first provider (the
primary, then the fallback when `ACME_SMTP_FALLBACK_URL` is set) whose circuit breaker lets it
through: all sends while the breaker is closed, one probe while it is half-open. When a
provider is down, or refuses *us* (a `ProviderError`: relay access, HELO, credentials, sender
domain, TLS; or the same permanent refusal for most recipients, which `RefusalStorm` spots), its
breaker opens after a few such failures, shared by every replica (`acme_notify.providers`):

* with a fallback, new sends and retries go there; a send that failed on the primary in a way
  that certainly delivered nothing (refused connection, 421, a refusal about us) is tried on the
  fallback at once, in the same attempt; one whose outcome is unknown (a timeout or a lost
  connection after the message data) is not, as it would not be retried at once on the primary
  either. The primary is probed half-open, and traffic fails back as soon as a probe succeeds;
* with no provider left, the replica stops reading and claiming (`capacity()` is 0), so entries
  wait in the stream without burning delivery counts, and the backlog drains by itself after a
  successful probe, with no operator action.

With one provider configured, all of this is exactly the single relay's behaviour.
"""

from __future__ import annotations

import time

import structlog
from opentelemetry import trace
from redis.asyncio import Redis

from acme_notify.errors import CircuitOpen, PermanentError, ProviderError, TransientError
from acme_notify.flow import CircuitBreaker, RefusalStorm, TokenBucket
from acme_notify.providers import PRIMARY, Accepted, Provider
from acme_notify.replies import refusal_key
from acme_notify.smtp import SmtpPool
from acme_notify.telemetry import NotifyMetrics
from acme_runtime.actors import PeriodicActor

__all__ = ["Accepted", "BreakerSync", "Delivery"]

log = structlog.get_logger(__name__)


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
        fallback: Provider | None = None,
        metrics: NotifyMetrics | None = None,
    ) -> None:
        self.primary = Provider(
            PRIMARY, pool, breaker, redis, consumer, storm or RefusalStorm(), rate
        )
        self.providers = [self.primary] + ([fallback] if fallback is not None else [])
        self._metrics = metrics

    @property
    def pool(self) -> SmtpPool:
        """The primary provider's pool."""
        return self.primary.pool

    @property
    def breaker(self) -> CircuitBreaker:
        """The primary provider's breaker."""
        return self.primary.breaker

    def capacity(self, free_slots: int) -> int:
        """How many entries may be taken now: all free slots while some provider's breaker is
        closed, one probe while the best is half-open (none while that probe is out)."""
        routes = {provider.route() for provider in self.providers}
        if "closed" in routes:
            return free_slots
        return min(free_slots, 1) if "probe" in routes else 0

    def fallback_for_s(self) -> float:
        """How long the fallback has been carrying the mail: since the primary's breaker last
        left `closed` (half-open probes that fail do not restart it), 0 while it is closed or
        with no fallback configured."""
        down_since = self.primary.down_since
        if len(self.providers) == 1 or down_since is None:
            return 0.0
        return time.monotonic() - down_since

    async def send(self, sender: str, recipients: list[str], data: bytes) -> Accepted:
        failure: TransientError | None = None
        for provider in self.providers:
            if not provider.breaker.allow():
                continue
            try:
                reply = await self._send_via(provider, sender, recipients, data)
            except TransientError as exc:
                exc.provider = provider.name
                if exc.server_down and not exc.ambiguous and provider is not self.providers[-1]:
                    # Certainly not delivered here: the next provider may take it now.
                    failure = exc
                    continue
                raise
            return Accepted(reply, provider.name)
        if failure is not None:
            raise failure
        raise CircuitOpen

    async def _send_via(
        self, provider: Provider, sender: str, recipients: list[str], data: bytes
    ) -> str:
        trace.get_current_span().set_attributes(
            {
                "server.address": provider.pool.config.host,
                "server.port": provider.pool.config.port,
                "acme.smtp.provider": provider.name,
            }
        )
        if provider.rate is not None:
            await provider.rate.acquire()
        started = time.perf_counter()
        outcome = "error"
        # Any exception but these (a defect of ours) says nothing about the server either way.
        try:
            reply = await provider.pool.send(sender, recipients, data)
            outcome = "accepted"
        except TransientError as exc:
            outcome = exc.reason_class
            if exc.server_down:
                await provider.failed(exc)
            else:  # a 4xx about this message: the server is up and answering
                await provider.answered()
            raise
        except PermanentError as exc:
            exc.provider = provider.name
            key = refusal_key(exc.reason)
            storm = provider.storm.refused(key, recipients[0])
            if storm:
                # The same refusal for most recipients: the relay refuses us, not them.
                # Inferred, not certain: the try is not given back, so a relay that only
                # seems to refuse us can hold an e-mail no longer than its retry budget.
                inferred = ProviderError(
                    f"{exc.reason} (the same refusal for {storm} recipients within "
                    f"{provider.storm.window_s:g} s: treated as the relay refusing us)",
                    refund=False,
                    storm_key=key,
                )
                outcome = inferred.reason_class
                await provider.failed(inferred)
                raise inferred from exc
            outcome = exc.reason_class
            # An answer about this recipient proves the server is up.
            await provider.answered()
            raise
        finally:
            self._count(provider.name, outcome, time.perf_counter() - started)
        await provider.answered()
        provider.storm.accepted()
        return reply

    def _count(self, provider: str, outcome: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.provider_sends.labels(provider, outcome).inc()
            self._metrics.provider_send_duration.labels(provider).observe(seconds)

    async def close(self) -> None:
        """QUIT every provider's idle connections."""
        for provider in self.providers:
            await provider.pool.close()

    async def sync_shared(self) -> None:
        """Follows the other replicas' view of every provider (`Provider.sync_shared`)."""
        for provider in self.providers:
            await provider.sync_shared()


class BreakerSync(PeriodicActor):
    def __init__(self, delivery: Delivery, interval_s: float = 0.5) -> None:
        super().__init__("breaker-sync", self._tick, interval_s)
        self._delivery = delivery

    async def _tick(self) -> bool:
        await self._delivery.sync_shared()
        return False
