"""Ctrl-C during a replay or purge: finish the page in flight, then stop and say how far.

The first SIGINT or SIGTERM (a closed `kubectl exec` session sends one) only sets an event that
the write loop checks between pages, so the run stops at a known point and reports exactly what
it did. A second signal leaves at once. Relying on task cancellation instead is not enough on
Python 3.11: redis-py sends through `asyncio.wait_for`, which there can swallow a cancellation
that arrives while a command is being written, and the run would go on.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["stop_on_signal"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signal(stop: asyncio.Event, note: Callable[[str], None]) -> Iterator[None]:
    """While inside, the first signal sets `stop`; the second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers live in the main thread only (an embedding test, say)
        return
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        note("acme: stopping after the entries in flight (press Ctrl-C again to leave now)")

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal)
    try:
        yield
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
