"""`acme api` served by Granian instead of uvicorn (`ACME_HTTP_SERVER=granian`, issue 16's A/B).

Granian's embedded server (`granian.server.embed.Server`) runs inside this process, on the event
loop `acme api` runs (uvloop): one worker, no child process, the app built once by the caller.
The worker runs the app's ASGI lifespan once, then serves HTTP/1.1 from one Rust thread that
hands each request to the loop. SIGTERM or SIGINT (acme_runtime.actors' handlers) stops the
accepting, lets the requests in progress finish, then runs the lifespan's shutdown.

Granian has neither uvicorn's `limit_concurrency` nor its graceful-shutdown timeout; `InFlight`
gives the API both, so the two servers answer overload and stop alike and the A/B compares the
request cycle alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from granian.constants import HTTPModes, Interfaces, TaskImpl
from granian.errors import FatalError
from granian.log import LogLevels
from granian.server.embed import Server

from acme_orders.settings import OrdersSettings
from acme_runtime.actors import install_signal_handlers

__all__ = ["DRAIN_S", "InFlight", "serve"]

log = structlog.get_logger(__name__)

#: After SIGTERM, requests in progress get this long before they are cancelled (uvicorn's
#: `timeout_graceful_shutdown` in acme_cli.main).
DRAIN_S: Final = 10.0
#: Connections waiting to be accepted: uvicorn's default (Granian's embedded default is 128).
_BACKLOG: Final = 2048
#: Granian's backpressure caps open connections, not requests: past it, connections wait in the
#: listen backlog unanswered. Twice the request limit keeps room for the connections that are to
#: be told 503 (and closed) instead, as uvicorn, which caps no connections, tells them.
_CONNECTIONS_PER_REQUEST_SLOT: Final = 2

_SERVICE_UNAVAILABLE: Final = b"Service Unavailable"

# ASGI as this module sees it: the app (Litestar) and the server (Granian) type it themselves.
_Message = Mapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_App = Callable[..., Awaitable[None]]


class InFlight:
    """The API's HTTP requests in progress: past `limit` a request is answered 503 at once, as
    uvicorn's `limit_concurrency` answers it; `cancel()` ends those left when the drain is over.
    Lifespan events pass through untouched."""

    def __init__(self, app: _App, limit: int) -> None:
        self._app = app
        self._limit = limit
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Mapping[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if len(self.tasks) >= self._limit:
            await _service_unavailable(send)
            return
        task = asyncio.current_task()
        assert task is not None  # Granian's asyncio task_impl runs each request as a Task
        self.tasks.add(task)
        try:
            await self._app(scope, receive, send)
        finally:
            self.tasks.discard(task)

    def cancel(self) -> int:
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)


async def _service_unavailable(send: _Send) -> None:
    """uvicorn's answer past `limit_concurrency`, byte for byte."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_SERVICE_UNAVAILABLE)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _SERVICE_UNAVAILABLE, "more_body": False})


def _logging_config() -> dict[str, Any]:
    """Granian's few log lines go to the root logger, as uvicorn's do with `log_config=None`,
    instead of to the stdout handlers Granian would install (it applies this with dictConfig,
    and modifies it, hence a fresh one each time)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {},
        "handlers": {},
        "loggers": {"_granian": {"propagate": True}, "granian.access": {"propagate": True}},
    }


def _server(app: InFlight, settings: OrdersSettings) -> Server:
    return Server(
        app,
        address=settings.http_host,
        port=settings.http_port,
        # ASGI with lifespan: the worker runs the app's startup once before it serves, and its
        # shutdown once after the last request ("asginl" would skip both).
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        # The embedded server always runs its Rust side on one current-thread runtime, whatever
        # runtime_threads says; 1 says so. ASGI requires exactly one blocking (Python) thread:
        # it builds each request's scope and hands it to the loop. Tokio's own blocking pool
        # (512 threads at most by default) only reads static files, which the API has none of.
        runtime_threads=1,
        runtime_blocking_threads=1,
        blocking_threads=1,
        # Requests are asyncio Tasks on our loop, as under uvicorn (the "rust" implementation
        # is experimental, and gone on Python 3.12+).
        task_impl=TaskImpl.asyncio,
        backlog=_BACKLOG,
        backpressure=settings.http_max_concurrency * _CONNECTIONS_PER_REQUEST_SLOT,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=_logging_config(),
        log_access=False,
    )


async def serve(app: _App, settings: OrdersSettings) -> bool:
    """Serves `app` on the settings' address until SIGTERM or SIGINT, then drains and runs the
    lifespan's shutdown. False when it stopped for any other reason: the lifespan's startup
    failed, or the worker ended by itself (Granian has logged why)."""
    in_flight = InFlight(app, settings.http_max_concurrency)
    server = _server(in_flight, settings)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    serving = asyncio.create_task(server.serve(), name="granian")
    stopping = asyncio.create_task(stop.wait(), name="granian-stop")
    await asyncio.wait((serving, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not serving.done():
        server.stop()  # type: ignore[no-untyped-call]  # Granian leaves Server.stop unannotated
        _, draining = await asyncio.wait((serving,), timeout=DRAIN_S)
        if draining:
            log.warning("http_drain_timeout", grace_s=DRAIN_S, cancelled=in_flight.cancel())
    try:
        await serving
    except FatalError:
        return False
    return stop.is_set()
