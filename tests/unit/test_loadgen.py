"""The open-loop load generator (bench/loadgen.py) against a tiny in-test HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from bench.loadgen import LoopbackOnlyError, run_load

RATE_PER_S = 200.0
DURATION_S = 1.0
EXPECTED = int(RATE_PER_S * DURATION_S)


@dataclass
class FakeServer:
    """Answers POSTs with 201 and an order-like JSON body, with a few scripted misbehaviours."""

    #: Every Nth response on the server carries `Connection: close`, and the server closes.
    close_every: int = 0
    #: Requests (by Idempotency-Key suffix) answered only after this delay.
    slow: dict[int, float] = field(default_factory=dict)
    #: Requests (by suffix) whose connection is closed without an answer, the first time only.
    drop_once: set[int] = field(default_factory=set)
    port: int = 0
    responses: int = 0
    seen: list[int] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(10_000):  # bounded: a connection serves at most this many requests
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line
                )
                await reader.readexactly(int(headers["Content-Length"]))
                index = int(headers["Idempotency-Key"].rsplit("-", 1)[1])
                self.seen.append(index)
                if index in self.drop_once:
                    self.drop_once.discard(index)
                    return
                if index in self.slow:
                    await asyncio.sleep(self.slow[index])
                self.responses += 1
                closing = self.close_every > 0 and self.responses % self.close_every == 0
                body = json.dumps(
                    {"id": str(uuid.uuid4()), "created_at": "2026-11-29T12:00:00+00:00"}
                ).encode()
                writer.write(
                    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                    + (b"connection: close\r\n" if closing else b"")
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if closing:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(fake: FakeServer) -> AsyncIterator[FakeServer]:
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


async def test_every_scheduled_request_completes_and_is_counted() -> None:
    """At 200/s for 1 s all ~200 requests complete as 201 despite closes and a dropped request."""
    fake = FakeServer(close_every=17, drop_once={12})
    async with serving(fake):
        result = await run_load("127.0.0.1", fake.port, RATE_PER_S, DURATION_S, 8)
    assert len(result.records) == EXPECTED
    assert [r.index for r in result.records] == list(range(EXPECTED))
    assert result.status_counts()["2xx"] == EXPECTED
    assert result.status_counts()["errors"] == 0
    assert all(r.order_id and r.created_at for r in result.records)
    assert all(r.latency_s > 0 for r in result.records)
    # The dropped request was retried once on a new connection, not counted as a failure.
    assert result.retries == 1
    assert [r.index for r in result.records if r.retried] == [12]
    # Connection: close made the generator reconnect beyond its 8 initial connections.
    assert result.connects > 8
    # Requests were due every 5 ms from t0, whatever the server did.
    assert result.records[-1].scheduled_s == pytest.approx((EXPECTED - 1) / RATE_PER_S)
    assert result.generator_cpu_s > 0


async def test_latency_counts_from_schedule_time_not_send_time() -> None:
    """Requests queued behind a 200 ms response on one connection show that wait."""
    slow_index = 40
    fake = FakeServer(slow={slow_index: 0.2})
    async with serving(fake):
        result = await run_load("127.0.0.1", fake.port, RATE_PER_S, DURATION_S, 1)
    assert result.status_counts()["2xx"] == EXPECTED
    by_index = {r.index: r for r in result.records}
    assert by_index[slow_index].latency_s >= 0.2
    # The next request was due 5 ms later and could only start when the slow one ended:
    # a closed-loop client would report ~0 ms for it; the open-loop one reports ~195 ms.
    assert by_index[slow_index + 1].latency_s >= 0.15
    assert by_index[slow_index + 1].queue_wait_s >= 0.15
    assert by_index[slow_index + 10].latency_s >= 0.1
    # Scheduling did not pause: the requests behind the slow one were still due every 5 ms.
    assert by_index[slow_index + 10].scheduled_s == pytest.approx((slow_index + 10) / RATE_PER_S)


async def test_refuses_a_host_that_is_not_loopback() -> None:
    """A non-loopback target is refused before any connection is made."""
    with pytest.raises(LoopbackOnlyError):
        await run_load("192.0.2.1", 80, RATE_PER_S, DURATION_S, 1)
    with pytest.raises(LoopbackOnlyError):
        await run_load("example.com", 80, RATE_PER_S, DURATION_S, 1)
