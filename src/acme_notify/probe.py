"""The stream probe actor: measures the events stream for the scaling and SLA gauges.

Lag (entries not yet delivered to the group) comes from XINFO GROUPS on Redis >= 7. Redis 6.2
(the embedded one) has no such field, so the probe counts the entries after the group's
last-delivered-id inside Redis (stream_lag.lua), capped so a huge backlog never stalls Redis;
a capped count is reported as the cap, which is enough to scale on. Ages are measured from the
entry id's timestamp, i.e. since publication: the part of the SLA the notifier owns.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_notify.keys import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP
from acme_notify.telemetry import NotifyMetrics
from acme_runtime.actors import PeriodicActor
from acme_runtime.lua import load_script

__all__ = ["StreamProbe", "StreamState", "measure_stream"]

LAG_COUNT_CAP = 100_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _age_s(entry_id: str | None, now_ms: int) -> float:
    if not entry_id:
        return 0.0
    return max(0.0, (now_ms - int(entry_id.split("-")[0])) / 1000)


class StreamState(dict[str, float]):
    """length, lag, lag_capped, pending, oldest_pending_age_s, oldest_unread_age_s, dead."""


async def measure_stream(redis: Redis, group: str = NOTIFIER_GROUP) -> StreamState:
    now_ms = time.time_ns() // 1_000_000
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
    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return state
    last_delivered = _text(info["last-delivered-id"])
    state["pending"] = float(info["pending"])
    if info.get("lag") is not None:
        state["lag"] = float(info["lag"])
    else:
        count, capped = await load_script("stream_lag").run(
            redis, [EVENTS_STREAM], [last_delivered, LAG_COUNT_CAP]
        )
        state["lag"], state["lag_capped"] = float(count), float(capped)
    if state["pending"]:
        summary: Any = await redis.xpending(EVENTS_STREAM, group)
        oldest = summary.get("min")  # None if everything was acknowledged in between
        state["oldest_pending_age_s"] = _age_s(None if oldest is None else _text(oldest), now_ms)
    if state["lag"]:
        unread: Any = await redis.xrange(EVENTS_STREAM, min=f"({last_delivered}", count=1)
        if unread:
            state["oldest_unread_age_s"] = _age_s(_text(unread[0][0]), now_ms)
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
