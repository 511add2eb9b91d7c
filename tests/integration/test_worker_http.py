"""The workers' HTTP listener: metrics and health, served from the worker's own event loop."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry, Counter

from acme_cli.embedded import free_port
from acme_runtime.metrics_http import WorkerHttp, dependencies_answer


async def test_worker_listener_serves_metrics_and_health() -> None:
    """/metrics shows the registry, /health/live answers, /health/ready follows the check."""
    registry = CollectorRegistry()
    Counter("acme_demo_total", "a demo counter", registry=registry).inc(3)
    healthy = True

    async def ready() -> bool:
        return healthy

    http = WorkerHttp(registry, "127.0.0.1", free_port(), ready)
    port = await http.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert "acme_demo_total 3.0" in metrics.text
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200
            healthy = False
            assert (await client.get("/health/ready")).status_code == 503
            assert (await client.get("/nope")).status_code == 404
    finally:
        await http.stop()


async def test_port_zero_disables_the_listener() -> None:
    """ACME_METRICS_PORT=0 means no listener at all."""
    http = WorkerHttp(CollectorRegistry(), "127.0.0.1", 0)
    assert await http.start() == 0
    await http.stop()


async def test_dependencies_answer_is_false_when_a_check_fails_or_hangs() -> None:
    """A failing or hanging dependency makes the worker unready, quickly."""

    async def ok() -> None:
        return None

    async def boom() -> None:
        raise ConnectionError("redis down")

    async def hang() -> None:
        await asyncio.sleep(10)

    assert await dependencies_answer([ok])
    assert not await dependencies_answer([ok, boom])
    started = asyncio.get_running_loop().time()
    assert not await dependencies_answer([hang], timeout_s=0.2)
    assert asyncio.get_running_loop().time() - started < 1.0
