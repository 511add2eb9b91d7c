"""Short garbage-collector pauses for long-running processes, and a metric that shows them.

Everything a process builds while it starts (imported modules, the web framework's routing
tables, the clients) lives until it exits, yet each of CPython's full collections walks all of
it, and the event loop stands still meanwhile: ~35 ms for the ~73,000 objects an `acme api`
holds after start-up, on this project's machine kind. `freeze_startup_heap()` moves them to the
permanent generation once start-up is done (`gc.freeze()`), so later collections walk only
what the process has made since. `timing_collections()` times every collection into the histogram
`acme_gc_pause_seconds{generation}`, so the effect, and any regression, is visible.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram

__all__ = ["GC_PAUSE_BUCKETS_S", "freeze_startup_heap", "gc_pause_histogram", "timing_collections"]

GC_PAUSE_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def freeze_startup_heap() -> None:
    """Collects once, then leaves every surviving object out of future collections."""
    gc.collect()
    gc.freeze()


def gc_pause_histogram(registry: CollectorRegistry) -> Histogram:
    """`acme_gc_pause_seconds{generation}`, registered with a process's metrics."""
    return Histogram(
        "acme_gc_pause_seconds",
        "Duration of each garbage collection (the event loop stands still), by generation.",
        ["generation"],
        buckets=GC_PAUSE_BUCKETS_S,
        registry=registry,
    )


@contextmanager
def timing_collections(histogram: Histogram) -> Iterator[None]:
    """Observes the duration of each collection while the block runs. One callback, removed
    on exit, so a test process that builds many apps does not pile callbacks up."""
    children = [histogram.labels(str(generation)) for generation in range(3)]
    started = 0.0

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        elif started:
            children[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(on_collection)
    try:
        yield
    finally:
        gc.callbacks.remove(on_collection)
