"""The outbox probe: measures the backlog in the source of truth for the relay's gauges.

The oldest unconfirmed order's age is the SLA as PostgreSQL sees it: it keeps growing while any
e-mail is late, whatever Redis says (even after Redis lost its data).
"""

from __future__ import annotations

from acme_orders.store import OrderStore
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.actors import PeriodicActor

__all__ = ["OutboxProbe"]


class OutboxProbe(PeriodicActor):
    def __init__(self, store: OrderStore, metrics: OrdersMetrics, *, interval_s: float) -> None:
        self._store = store
        self._metrics = metrics
        super().__init__("outbox-probe", self._probe, interval_s)

    async def _probe(self) -> bool:
        backlog = await self._store.outbox_backlog()
        m = self._metrics
        m.outbox_unpublished.set(backlog.get("unpublished") or 0)
        m.outbox_unconfirmed.set(backlog.get("unconfirmed") or 0)
        m.outbox_oldest_unpublished_age.set(float(backlog.get("oldest_unpublished_s") or 0))
        m.outbox_oldest_unconfirmed_age.set(float(backlog.get("oldest_unconfirmed_s") or 0))
        return False
