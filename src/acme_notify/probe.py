"""The stream probe actor: measures the events stream for the scaling and SLA gauges.

Lag (entries not yet delivered to the group) is measured as `acme_runtime.consumers.group_lag`
measures it: reported by Redis >= 7, counted inside Redis (capped) on 6.2; a capped count is
reported as the cap, which is enough to scale on. Ages are measured from the entry id's
timestamp, i.e. since publication: the part of the SLA the notifier owns.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_notify.keys import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP
from acme_notify.telemetry import NotifyMetrics
from acme_runtime.actors import PeriodicActor
from acme_runtime.clock import now_ms
from acme_runtime.consumers import entry_age_s, group_lag
from acme_runtime.text import as_text

__all__ = ["StreamProbe", "StreamState", "measure_stream"]


class StreamState(dict[str, float]):
    """length, lag, lag_capped, pending, oldest_pending_age_s, oldest_unread_age_s, dead."""


async def measure_stream(redis: Redis, group: str = NOTIFIER_GROUP) -> StreamState:
    now = now_ms()
    state = StreamState(
        length=float(await redis.xlen(EVENTS_STREAM)),
        dead=float(await redis.xlen(DEAD_STREAM)),
        lag=0.0,
        lag_capped=0.0,
        pending=0.0,
        oldest_pending_age_s=0.0,
        oldest_unread_age_s=0.0,
    )
    try:
        groups: Any = await redis.xinfo_groups(EVENTS_STREAM)
    except ResponseError:  # no stream yet
        return state
    info = next((g for g in groups if as_text(g["name"]) == group), None)
    if info is None:
        return state
    last_delivered = as_text(info["last-delivered-id"])
    state["pending"] = float(info["pending"])
    lag = await group_lag(redis, EVENTS_STREAM, info)
    state["lag"], state["lag_capped"] = float(lag.entries), float(lag.capped)
    if state["pending"]:
        summary: Any = await redis.xpending(EVENTS_STREAM, group)
        oldest = summary.get("min")  # None if everything was acknowledged in between
        if oldest is not None:
            state["oldest_pending_age_s"] = entry_age_s(as_text(oldest), now)
    if state["lag"]:
        unread: Any = await redis.xrange(EVENTS_STREAM, min=f"({last_delivered}", count=1)
        if unread:
            state["oldest_unread_age_s"] = entry_age_s(as_text(unread[0][0]), now)
    return state


class StreamProbe(PeriodicActor):
    def __init__(self, redis: Redis, metrics: NotifyMetrics, *, interval_s: float) -> None:
        self._redis = redis
        self._metrics = metrics
        super().__init__("stream-probe", self._probe, interval_s)

    async def _probe(self) -> bool:
        state = await measure_stream(self._redis)
        m = self._metrics
        m.stream_length.labels(EVENTS_STREAM).set(state["length"])
        m.stream_length.labels(DEAD_STREAM).set(state["dead"])
        m.stream_lag.labels(EVENTS_STREAM, NOTIFIER_GROUP).set(state["lag"])
        m.stream_pending.labels(EVENTS_STREAM, NOTIFIER_GROUP).set(state["pending"])
        m.oldest_pending_age.labels(EVENTS_STREAM, NOTIFIER_GROUP).set(
            state["oldest_pending_age_s"]
        )
        m.oldest_unread_age.labels(EVENTS_STREAM, NOTIFIER_GROUP).set(state["oldest_unread_age_s"])
        return False
