"""The janitor actor: keeps the order service's bounded tables bounded.

Idempotency keys are only needed while clients may retry (`idempotency_ttl_s`, 24 h by default);
the janitor deletes older ones in small batches so no sweep holds long locks. (Outbox rows are
deleted by the receipts consumer as soon as an e-mail is confirmed sent or dead.)
"""

from __future__ import annotations

import structlog

from acme_orders.store import OrderStore
from acme_runtime.actors import PeriodicActor

__all__ = ["Janitor"]

log = structlog.get_logger(__name__)


class Janitor(PeriodicActor):
    def __init__(
        self, store: OrderStore, *, interval_s: float, idempotency_ttl_s: int, batch: int = 5_000
    ) -> None:
        self._store = store
        self._ttl_s = idempotency_ttl_s
        self._batch = batch
        super().__init__("janitor", self._sweep, interval_s)

    async def _sweep(self) -> bool:
        deleted = await self._store.delete_expired_keys(self._ttl_s, self._batch)
        if deleted:
            log.info("janitor_deleted_idempotency_keys", rows=deleted)
        return deleted >= self._batch
