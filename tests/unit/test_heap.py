"""GC pauses are timed per generation, and start-up objects leave future collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from acme_runtime.heap import freeze_startup_heap, gc_pause_histogram, timing_collections


def _count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("acme_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_each_collection_is_timed_under_its_generation_and_the_callback_goes_on_exit() -> None:
    registry = CollectorRegistry()
    histogram = gc_pause_histogram(registry)
    callbacks_before = len(gc.callbacks)
    with timing_collections(histogram):
        assert len(gc.callbacks) == callbacks_before + 1
        gc.collect(2)
        gc.collect(0)
    assert _count(registry, "2") >= 1
    assert _count(registry, "0") >= 1
    total = registry.get_sample_value("acme_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total > 0
    assert len(gc.callbacks) == callbacks_before
    timed = _count(registry, "2")
    gc.collect(2)  # outside the block: not timed any more
    assert _count(registry, "2") == timed


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_startup_objects_are_left_out_of_later_collections() -> None:
    startup = [[n] for n in range(10_000)]
    freeze_startup_heap()
    assert gc.get_freeze_count() >= len(startup)
    tracked = len(gc.get_objects())
    assert tracked < gc.get_freeze_count()  # the frozen objects are no longer walked
