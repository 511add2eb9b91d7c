"""The janitor actor: keeps the order service's bounded tables bounded.

- The timeline is RANGE-partitioned by order id (a UUIDv7, so by the order's time): each round
  the janitor creates partitions ahead and drops whole partitions whose range is older than
  `timeline_retention_s`, an O(1) `DROP TABLE` instead of a `DELETE` of a day's rows
  (acme_runtime.partitions; docs/adr/0018-partitioned-tables.md). Its first round runs at
  start, so a relay that starts after a long pause creates what is missing before anything
  else. Every relay replica runs a janitor; an advisory lock lets one of them do each round.
- Idempotency keys are only needed while clients may retry (`idempotency_ttl_s`, 24 h by
  default); they are deleted in small batches so no sweep holds long locks (a plain table:
  see `OrderStore.delete_expired_keys`).

(Outbox rows are deleted by the receipts consumer as soon as an e-mail is confirmed sent or
dead.) Orders and their items are the business's data and are kept.
"""

from __future__ import annotations

import time

import structlog

from acme_orders.store import TIMELINE_TABLE, OrderStore
from acme_runtime.actors import PeriodicActor
from acme_runtime.partitions import PartitionMetrics, maintain

__all__ = ["Janitor"]

log = structlog.get_logger(__name__)


class Janitor(PeriodicActor):
    def __init__(
        self,
        store: OrderStore,
        *,
        interval_s: float,
        idempotency_ttl_s: int,
        partition_interval_s: int = 86_400,
        timeline_retention_s: int = 30 * 86_400,
        partition_metrics: PartitionMetrics | None = None,
        batch: int = 5_000,
    ) -> None:
        self._store = store
        self._ttl_s = idempotency_ttl_s
        self._batch = batch
        self._partition_interval_s = partition_interval_s
        self._timeline_retention_s = timeline_retention_s
        self._partition_metrics = partition_metrics
        self._partitions_due = 0.0
        super().__init__("janitor", self._sweep, interval_s)

    async def _sweep(self) -> bool:
        # Once per round, not again for each further batch of keys of a busy sweep.
        if time.monotonic() >= self._partitions_due:
            await maintain(
                self._store.pool,
                TIMELINE_TABLE,
                interval_s=self._partition_interval_s,
                retention_s=self._timeline_retention_s,
                metrics=self._partition_metrics,
            )
            self._partitions_due = time.monotonic() + self._interval_s
        deleted = await self._store.delete_expired_keys(self._ttl_s, self._batch)
        if deleted:
            log.info("janitor_deleted_idempotency_keys", rows=deleted)
        return deleted >= self._batch
