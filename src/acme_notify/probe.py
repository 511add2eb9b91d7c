"""The stream probe actor: measures the events stream for the scaling and SLA gauges.

Lag (entries not yet delivered to the group) is measured as `acme_runtime.consumers.group_lag`
measures it: reported by Redis >= 7, counted inside Redis (capped) on 6.2; a capped count is
reported as the cap, which is enough to scale on. Ages are measured from the entry id's
timestamp, i.e. since publication: the part of the SLA the notifier owns. Each shard's stream
is a series of its own (label `stream`); what scales the notifier is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_notify.keys import NOTIFIER_GROUP
from acme_notify.telemetry import NotifyMetrics
from acme_runtime.actors import PeriodicActor
from acme_runtime.channels import Shard, shard
from acme_runtime.clock import now_ms
from acme_runtime.consumers import entry_age_s, group_lag
from acme_runtime.text import as_text

__all__ = ["StreamProbe", "StreamState", "measure_stream"]


_SHARD_0: Final = shard(0)


class StreamState(dict[str, float]):
    """length, lag, lag_capped, pending, oldest_pending_age_s, oldest_unread_age_s, dead."""


async def measure_stream(
    redis: Redis, group: str = NOTIFIER_GROUP, on: Shard = _SHARD_0
) -> StreamState:
    now = now_ms()
    events = on.events
    state = StreamState(
        length=float(await redis.xlen(events)),
        dead=float(await redis.xlen(on.dead)),
        lag=0.0,
        lag_capped=0.0,
        pending=0.0,
        oldest_pending_age_s=0.0,
        oldest_unread_age_s=0.0,
    )
    try:
        groups: Any = await redis.xinfo_groups(events)
    except ResponseError:  # no stream yet
        return state
    info = next((g for g in groups if as_text(g["name"]) == group), None)
    if info is None:
        return state
    last_delivered = as_text(info["last-delivered-id"])
    state["pending"] = float(info["pending"])
    lag = await group_lag(redis, events, info)
    state["lag"], state["lag_capped"] = float(lag.entries), float(lag.capped)
    if state["pending"]:
        summary: Any = await redis.xpending(events, group)
        oldest = summary.get("min")  # None if everything was acknowledged in between
        if oldest is not None:
            state["oldest_pending_age_s"] = entry_age_s(as_text(oldest), now)
    if state["lag"]:
        unread: Any = await redis.xrange(events, min=f"({last_delivered}", count=1)
        if unread:
            state["oldest_unread_age_s"] = entry_age_s(as_text(unread[0][0]), now)
    return state


class StreamProbe(PeriodicActor):
    def __init__(
        self,
        redis: Redis,
        metrics: NotifyMetrics,
        *,
        interval_s: float,
        shards: Sequence[Shard] = (_SHARD_0,),
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._shards = tuple(shards)
        super().__init__("stream-probe", self._probe, interval_s)

    async def _probe(self) -> bool:
        m = self._metrics
        for on in self._shards:
            state = await measure_stream(self._redis, NOTIFIER_GROUP, on)
            m.stream_length.labels(on.events).set(state["length"])
            m.stream_length.labels(on.dead).set(state["dead"])
            m.stream_lag.labels(on.events, NOTIFIER_GROUP).set(state["lag"])
            m.stream_pending.labels(on.events, NOTIFIER_GROUP).set(state["pending"])
            m.oldest_pending_age.labels(on.events, NOTIFIER_GROUP).set(
                state["oldest_pending_age_s"]
            )
            m.oldest_unread_age.labels(on.events, NOTIFIER_GROUP).set(state["oldest_unread_age_s"])
        return False
