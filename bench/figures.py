"""From raw measurements to figures: per-order rows, percentiles, per-second series, RSS slopes.

Pure functions over what a run collected (the load generator's records, what the sink
recorded, the monitor's samples); nothing here talks to a process or the network.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from bench.loadgen import LoadResult
from bench.stack import MailLog, iso_ms, nearest_rank

__all__ = [
    "Order",
    "e2e_figures",
    "orders_of",
    "peak_sample",
    "post_figures",
    "rss_figures",
    "sample_rows",
    "series",
]

_PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
_MAX_SERIES_ROWS: Final = 20_000


# --- orders and latencies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    due_unix: float
    latency_s: float
    status: int
    order_id: str | None
    created_unix: float | None


def orders_of(loads: Iterable[LoadResult]) -> list[Order]:
    rows = []
    for load in loads:
        for r in load.records:
            created = iso_ms(r.created_at) / 1000 if r.created_at else None
            rows.append(
                Order(
                    load.started_unix_s + r.scheduled_s, r.latency_s, r.status, r.order_id, created
                )
            )
    return rows


def _pcts(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {label: round(nearest_rank(ordered, f), 2) for label, f in _PERCENTILES}
    out["max"] = round(ordered[-1], 2) if ordered else math.nan
    out["count"] = len(ordered)
    return out


def post_figures(orders: list[Order], loads: list[LoadResult]) -> dict[str, Any]:
    ok = [o for o in orders if 200 <= o.status < 300]
    answered = [o.latency_s * 1000 for o in orders if o.status != 0]
    first = min((o.due_unix for o in orders), default=0.0)
    last_done = max((o.due_unix + o.latency_s for o in orders), default=0.0)
    elapsed = max(1e-9, last_done - first)
    gen_cpu = sum(load.generator_cpu_s for load in loads)
    return {
        "offered": len(orders),
        "accepted": len(ok),
        "not_2xx": len(orders) - len(ok),
        "errors_no_response": sum(1 for o in orders if o.status == 0),
        "achieved_per_s": round(len(ok) / elapsed, 1),
        "latency_ms": _pcts(answered),
        "dispatch_lag_p99_ms": round(
            max((ld.dispatch_lag_ms()["p99"] for ld in loads), default=math.nan), 2
        ),
        "generator_cpu_ms_per_request": round(gen_cpu * 1000 / max(1, len(orders)), 3),
        "retries": sum(load.retries for load in loads),
    }


def e2e_figures(orders: list[Order], mail: MailLog) -> dict[str, Any]:
    ok = [o for o in orders if 200 <= o.status < 300 and o.order_id]
    e2e, from_due, received = [], [], []
    for o in ok:
        at = mail.first_at.get(o.order_id or "")
        if at is None or o.created_unix is None:
            continue
        received.append(at)
        e2e.append((at - o.created_unix) * 1000)
        from_due.append((at - o.due_unix) * 1000)
    received.sort()
    span = received[-1] - received[0] if len(received) > 1 else 0.0
    last_post = max((o.due_unix + o.latency_s for o in ok), default=math.nan)
    return {
        "orders_accepted": len(ok),
        "orders_with_email": len(received),
        "missing": len(ok) - len(received),
        "duplicates": sum(
            mail.copies.get(o.order_id or "", 1) - 1 for o in ok if o.order_id in mail.first_at
        ),
        "e2e_ms": _pcts(e2e),
        "e2e_from_scheduled_ms": _pcts(from_due),
        "emails_per_s_first_to_last": round((len(received) - 1) / span, 1) if span else 0.0,
        "last_email_after_last_post_s": (
            round(received[-1] - last_post, 3) if received else math.nan
        ),
    }


# --- time series --------------------------------------------------------------------------


def series(t0: float, orders: list[Order], mail: MailLog | None) -> dict[str, Any]:
    """Per second since t0: offered and accepted (by due time), POST p50/p99 (by due time),
    e-mails received and their e2e p50/p99/max (by arrival time)."""
    by_due: dict[int, list[Order]] = {}
    created = {o.order_id: o.created_unix for o in orders if o.order_id}
    for o in orders:
        by_due.setdefault(int(o.due_unix - t0), []).append(o)
    arrivals: dict[int, list[float]] = {}
    if mail is not None:
        for order_id, at in mail.first_at.items():
            made = created.get(order_id)
            bucket = arrivals.setdefault(int(at - t0), [])
            if made is not None:
                bucket.append((at - made) * 1000)
            else:
                bucket.append(math.nan)
    seconds = [s for s in (*by_due, *arrivals) if 0 <= s < _MAX_SERIES_ROWS]
    columns = [
        "t_s",
        "offered",
        "accepted",
        "not_2xx",
        "post_p50_ms",
        "post_p99_ms",
        "emails",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "e2e_max_ms",
    ]
    rows = []
    for second in range(max(seconds, default=-1) + 1):
        due = by_due.get(second, [])
        lat = sorted(o.latency_s * 1000 for o in due if o.status != 0)
        got = arrivals.get(second, [])
        e2e = sorted(v for v in got if not math.isnan(v))
        rows.append(
            [
                second,
                len(due),
                sum(1 for o in due if 200 <= o.status < 300),
                sum(1 for o in due if not 200 <= o.status < 300),
                round(nearest_rank(lat, 0.5), 2),
                round(nearest_rank(lat, 0.99), 2),
                len(got),
                round(nearest_rank(e2e, 0.5), 1),
                round(nearest_rank(e2e, 0.99), 1),
                round(e2e[-1], 1) if e2e else math.nan,
            ]
        )
    return {"t0_unix": t0, "columns": columns, "rows": rows}


def sample_rows(t0: float, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's samples with time since t0 and CPU as cores used since the last sample."""
    out = []
    previous: dict[str, Any] | None = None
    for sample in samples:
        row = {k: v for k, v in sample.items() if k != "cpu_s"}
        row["t_s"] = round(sample["t_unix"] - t0, 2)
        if previous is not None:
            dt = max(1e-6, sample["t_unix"] - previous["t_unix"])
            row["cores"] = {
                name: round(max(0.0, used - previous["cpu_s"].get(name, used)) / dt, 3)
                for name, used in sample["cpu_s"].items()
            }
            row["machine_cores"] = round(
                (sample["machine_busy_s"] - previous["machine_busy_s"]) / dt, 3
            )
        out.append(row)
        previous = sample
    return out


def rss_figures(
    samples: list[dict[str, Any]], start_unix: float, end_unix: float
) -> dict[str, Any]:
    """Per process: max RSS and the growth slope (least squares, MiB per minute) over the
    samples between start and end, and over their second half alone."""
    points: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        if start_unix <= sample["t_unix"] <= end_unix:
            for name, value in sample.get("rss_mb", {}).items():
                points.setdefault(name, []).append((sample["t_unix"], value))
    out: dict[str, Any] = {}
    for name, xy in points.items():
        half = [p for p in xy if p[0] >= (xy[0][0] + xy[-1][0]) / 2]
        out[name] = {
            "samples": len(xy),
            "first_mb": xy[0][1],
            "last_mb": xy[-1][1],
            "max_mb": max(v for _t, v in xy),
            "slope_mb_per_min": _slope_per_min(xy),
            "slope_second_half_mb_per_min": _slope_per_min(half),
        }
    return out


def _slope_per_min(xy: list[tuple[float, float]]) -> float:
    if len(xy) < 3:
        return math.nan
    mean_t = statistics.fmean(t for t, _ in xy)
    mean_v = statistics.fmean(v for _, v in xy)
    var = sum((t - mean_t) ** 2 for t, _ in xy)
    if var <= 0:
        return math.nan
    return round(60 * sum((t - mean_t) * (v - mean_v) for t, v in xy) / var, 3)


def peak_sample(samples: list[dict[str, Any]], key: str) -> float:
    return max((float(s.get(key, 0.0)) for s in samples), default=math.nan)
