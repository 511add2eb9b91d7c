"""`acme api` served by Granian (ACME_HTTP_SERVER=granian) on real PostgreSQL and Redis: its
lifespan runs once, an order is created and read back, SIGTERM ends it cleanly; and the overload
answer it shares with uvicorn. Skipped when granian (the `granian` extra) is not installed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("granian", reason="the `granian` extra is not installed")

from acme_cli.embedded import free_port
from acme_cli.granian_server import InFlight
from tests.harness import api_key, eventually

ORDER: dict[str, Any] = {
    "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
    "items": [{"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}],
    "currency": "BRL",
}
STOP_TIMEOUT_S = 5


def _events(log: Path) -> list[str]:
    """The structlog events (JSON lines) of a process's log, in order."""
    return [json.loads(line)["event"] for line in log.read_text().splitlines() if line[:1] == "{"]


async def test_granian_serves_orders_runs_the_lifespan_once_and_stops_on_sigterm(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """With ACME_HTTP_SERVER=granian, `acme api` answers 201 then 200 for an order, and on
    SIGTERM exits 0 within seconds, its lifespan having started once and shut down once."""
    key = await api_key(database_url)
    port = free_port()
    env = {
        **os.environ,
        "ACME_DATABASE_URL": database_url,
        "ACME_REDIS_URL": redis_url,
        "ACME_HTTP_HOST": "127.0.0.1",
        "ACME_HTTP_PORT": str(port),
        "ACME_HTTP_SERVER": "granian",
        "ACME_LOG_FORMAT": "json",
        "ACME_LOG_LEVEL": "info",
        "ACME_METRICS_PORT": "0",
    }
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "acme_cli.main",
            "api",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        ) as client:

            async def ready() -> bool:
                assert process.returncode is None, f"acme api exited: {log.read_text()[-2000:]}"
                try:
                    return (await client.get("/health/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout_s=30, what="acme api (granian) to be ready")
            created = await client.post("/orders", json=ORDER)
            assert created.status_code == 201, created.text
            assert created.headers["server"] == "granian"
            order_id = created.json()["id"]
            read = await client.get(f"/orders/{order_id}")
            assert read.status_code == 200, read.text
            assert read.json()["id"] == order_id

        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert returncode == 0, log.read_text()[-2000:]
    events = _events(log)
    assert events.count("api_metrics_listening") == 1, events  # the lifespan's startup
    assert events.count("shutdown_draining") == 1, events  # its shutdown, after serving


async def test_past_the_concurrency_limit_a_request_gets_uvicorns_quick_503() -> None:
    """With `limit` requests in progress the next is answered 503 (uvicorn's bytes) without
    reaching the app; lifespan events still pass; `cancel()` ends the one in progress."""
    release = asyncio.Event()
    reached: list[str] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["type"])
        await release.wait()

    in_flight = InFlight(app, limit=1)
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b""}

    first = asyncio.create_task(in_flight({"type": "http"}, receive, send))
    await eventually(lambda: asyncio.sleep(0, result=bool(in_flight.tasks)), what="in flight")
    await in_flight({"type": "http"}, receive, send)
    assert sent[0]["status"] == 503
    assert (b"connection", b"close") in sent[0]["headers"]
    assert sent[1]["body"] == b"Service Unavailable"
    lifespan = asyncio.create_task(in_flight({"type": "lifespan"}, receive, send))
    await eventually(lambda: asyncio.sleep(0, result=len(reached) == 2), what="lifespan")
    assert reached == ["http", "lifespan"]

    assert in_flight.cancel() == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not in_flight.tasks
    release.set()
    await lifespan
