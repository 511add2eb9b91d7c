"""The small HTTP listener of the worker processes (relay, notifier): metrics and health.

It runs *inside* the worker's event loop, on purpose: if the loop is stuck, `/health/live`
stops answering and Kubernetes restarts the pod, which a listener on its own thread would
never notice. Routes: `GET /metrics` (Prometheus text format), `GET /health/live` (the loop
runs), `GET /health/ready` (the `ready` callable says the dependencies answer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["ROUTES", "WorkerHttp", "dependencies_answer"]

#: Every route the listener serves (the Kubernetes manifests' probes are checked against it).
ROUTES = ("/metrics", "/health/live", "/health/ready")

_MAX_REQUEST_BYTES = 8192
_READ_TIMEOUT_S = 5.0


class WorkerHttp:
    """Serves one worker's metrics and health; `port` 0 disables it."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._ready = ready
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        if self._port == 0:
            return 0
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, content_type, body = await self._route(method, path.split("?", 1)[0])
        except (
            OSError,
            ValueError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + body
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/health/live":
            return 200, "application/json", b'{"status":"ok"}'
        if path == "/health/ready":
            ready = True if self._ready is None else await self._ready()
            if ready:
                return 200, "application/json", b'{"status":"ok"}'
            return 503, "application/json", b'{"status":"unavailable"}'
        return 404, "text/plain", b"not found\n"


async def dependencies_answer(
    checks: list[Callable[[], Awaitable[object]]], timeout_s: float = 1.0
) -> bool:
    """True when every check (a PING, a SELECT 1) completes within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            for check in checks:
                await check()
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    return True
