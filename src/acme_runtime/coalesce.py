"""Joins the calls that tasks make in the same event-loop turn into one batched call.

A notifier has up to `concurrency` e-mails in flight; their SMTP replies tend to arrive together,
and each then needs the same round trip (a ledger look-up, a ledger insert, an XACK). Instead of
N round trips, `Coalescer` hands the N arguments to one batch function and gives every caller
its own result. At low rates a batch holds one call and costs what the single call did; when
the notifier is busy the round trips per e-mail fall with the batch size.

Semantics every caller can rely on:

* the call returns only once the batch that holds it has completed (a ledger row is committed
  before its caller goes on to acknowledge the entry);
* a batch that fails fails every call in it with the same exception (each caller handles it as
  it handled a failed single call);
* a caller that is cancelled does not cancel the batch: the others in it still get results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """`await coalescer(key)` -> that key's result from `run_batch([...keys])`.

    `run_batch` must return one result per key, in the keys' order. Calls made in the same
    loop turn are batched, at most `max_batch` per batch.
    """

    def __init__(
        self, run_batch: Callable[[Sequence[K]], Awaitable[Sequence[V]]], *, max_batch: int = 256
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._flush_scheduled = False
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._running: set[asyncio.Task[None]] = set()

    async def __call__(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        self._waiting.append((key, future))
        if len(self._waiting) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # A cancelled caller cancels only its own future; the batch runs on for the others.
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        task = asyncio.create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            results = await self._run_batch([key for key, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)} keys"
                )
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller gets it, as from a single call
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
