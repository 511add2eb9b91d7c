"""Coalescer: calls of one loop turn share a batch; each caller gets its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from acme_runtime.coalesce import Coalescer


class Recorder:
    """A batch function that doubles its keys and remembers every batch it was given."""

    def __init__(self, *, fail_on: int | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.delay_s = delay_s

    async def __call__(self, keys: Sequence[int]) -> list[int]:
        self.batches.append(list(keys))
        await asyncio.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in keys:
            raise ConnectionError(f"batch with {self.fail_on} failed")
        return [key * 2 for key in keys]


async def test_calls_made_in_one_loop_turn_share_one_batch_and_get_their_own_results() -> None:
    recorder = Recorder()
    coalesce = Coalescer(recorder)
    results = await asyncio.gather(*(coalesce(n) for n in range(5)))
    assert results == [0, 2, 4, 6, 8]
    assert recorder.batches == [[0, 1, 2, 3, 4]]


async def test_calls_in_later_turns_start_a_new_batch() -> None:
    recorder = Recorder()
    coalesce = Coalescer(recorder)
    assert await coalesce(1) == 2
    assert await coalesce(2) == 4
    assert recorder.batches == [[1], [2]]


async def test_a_batch_never_exceeds_max_batch() -> None:
    recorder = Recorder()
    coalesce = Coalescer(recorder, max_batch=3)
    results = await asyncio.gather(*(coalesce(n) for n in range(7)))
    assert results == [n * 2 for n in range(7)]
    assert [len(batch) for batch in recorder.batches] == [3, 3, 1]


async def test_a_failed_batch_fails_every_caller_in_it_and_only_those() -> None:
    recorder = Recorder(fail_on=1)
    coalesce = Coalescer(recorder)
    outcomes = await asyncio.gather(*(coalesce(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert await coalesce(5) == 10  # the next batch is unaffected


async def test_a_cancelled_caller_does_not_cancel_the_batch_for_the_others() -> None:
    recorder = Recorder(delay_s=0.05)
    coalesce = Coalescer(recorder)
    first = asyncio.create_task(coalesce(1))
    second = asyncio.create_task(coalesce(2))
    await asyncio.sleep(0.01)  # both are in the running batch now
    first.cancel()
    assert await second == 4
    with pytest.raises(asyncio.CancelledError):
        await first
    assert recorder.batches == [[1, 2]]


async def test_a_batch_function_returning_the_wrong_count_is_an_error_for_its_callers() -> None:
    async def short(keys: Sequence[int]) -> list[int]:
        return list(keys)[:-1]

    coalesce = Coalescer(short)
    outcomes = await asyncio.gather(coalesce(1), coalesce(2), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)


def test_max_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(Recorder(), max_batch=0)
