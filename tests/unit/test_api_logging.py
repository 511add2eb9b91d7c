"""The API's logging stays the process's: one JSON line per event from structlog, and the
standard library's loggers at WARNING (acme_runtime.logs). Litestar, left to its default,
reconfigures the root logger at INFO with a plain-text handler of its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from acme_orders.api import build_app
from acme_orders.telemetry import OrdersMetrics


@asynccontextmanager
async def _no_clients(_app: Litestar) -> AsyncIterator[None]:
    yield


def test_building_the_api_leaves_the_root_logger_as_the_process_configured_it() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    build_app(lifespan=_no_clients, max_body_bytes=65_536, metrics=OrdersMetrics())
    assert (list(root.handlers), root.level) == before, (
        "building the app changed the root logger: third-party INFO lines in another format"
    )
