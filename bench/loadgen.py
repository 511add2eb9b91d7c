"""Open-loop, constant-arrival-rate HTTP/1.1 load generator for `POST /orders`.

Why it is built this way (see /work/shared/MEASURING.md):

- Open loop: request i is due at ``t0 + i / rate`` whatever happened to earlier requests, and
  its latency counts from that due time. A server that stalls therefore shows the queue it
  caused instead of slowing the generator down with it (no coordinated omission).
- Bare asyncio streams, not httpx: a shared httpx pool spends milliseconds of CPU per request
  at tens of connections, and on a 2-core box the generator would end up measuring itself.
- The generator reports its own CPU time per request and how late it dispatched requests, so
  a reader can tell when the generator, not the server, was the bottleneck.

Traffic goes to loopback addresses only; anything else is refused.

Usage: ``python bench/loadgen.py --port 8000 --rate 200 --duration-s 30``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_CONNECTIONS",
    "MAX_CONNECTIONS",
    "MAX_DURATION_S",
    "MAX_RATE_PER_S",
    "LoadResult",
    "LoopbackOnlyError",
    "RequestRecord",
    "http_get_status",
    "loopback_host",
    "order_body",
    "run_load",
]

MAX_RATE_PER_S: Final = 5_000.0
MAX_DURATION_S: Final = 600.0
MAX_CONNECTIONS: Final = 1_024
DEFAULT_CONNECTIONS: Final = 64
DEFAULT_REQUEST_TIMEOUT_S: Final = 30.0
DEFAULT_DRAIN_TIMEOUT_S: Final = 30.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
MAX_DRAIN_TIMEOUT_S: Final = 300.0

# Response limits: a misbehaving server must not make the generator buffer without end.
_STREAM_LIMIT_BYTES: Final = 64 * 1024
_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_MAX_CHUNKS: Final = 10_000
_MAX_TRAILER_LINES: Final = 100
# The first request is due a little after the clock starts, so task start-up is not counted.
_START_DELAY_S: Final = 0.05
# Percentiles the summary reports, as (label, fraction).
_PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
# A generator busier than this share of one core is likely to have delayed requests itself.
_GENERATOR_BUSY_SHARE: Final = 0.7

_CUSTOMERS: Final = (
    ("Ana Souza", "pt-BR"),
    ("Bruno Lima", "pt-BR"),
    ("Chen Wei", "en-US"),
    ("Dmitri Ivanov", "en-US"),
    ("Émilie Dubois", "en-US"),
    ("Fátima Zahra", "pt-BR"),
    ("Grace O'Neil", "en-US"),
    ("Hiroshi Tanaka", "en-US"),
)
_CATALOG: Final = (
    ("CANECA-01", "Caneca", "19.90"),
    ("CAMISA-02", "Camiseta", "59.00"),
    ("BONE-03", "Boné", "39.50"),
    ("MOCHILA-04", "Mochila", "149.99"),
    ("ADESIVO-05", "Adesivo", "2.50"),
    ("CADERNO-06", "Caderno", "24.00"),
)
_MAX_ITEMS_PER_ORDER: Final = 5


class LoopbackOnlyError(ValueError):
    """The target is not a loopback address; this generator never sends traffic elsewhere."""


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.x this client understands."""


class _NoResponseError(ConnectionError):
    """The connection ended before any byte of the response: the request may be retried.

    This is what a keep-alive connection the server closed while idle looks like (uvicorn
    closes them after 5 s); the Idempotency-Key makes a retry safe even if the server did see
    the request.
    """


def loopback_host(host: str) -> str:
    """Return `host` as a loopback IP literal, or raise LoopbackOnlyError."""
    if host == "localhost":
        # Not resolved through DNS or /etc/hosts: those could point anywhere.
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise LoopbackOnlyError(f"{host!r} is not an IP literal; use 127.0.0.1") from None
    if not address.is_loopback:
        raise LoopbackOnlyError(f"{host} is not a loopback address; refusing to send traffic")
    return host


def order_body(index: int, rng: random.Random) -> bytes:
    """A valid, varied order: the customer, e-mail and number of items change per request."""
    name, locale = _CUSTOMERS[index % len(_CUSTOMERS)]
    count = rng.randint(1, _MAX_ITEMS_PER_ORDER)
    items = [
        {"sku": sku, "name": item_name, "quantity": rng.randint(1, 5), "unit_price": price}
        for sku, item_name, price in rng.sample(_CATALOG, count)
    ]
    order = {
        "customer": {"name": name, "email": f"customer{index}@example.com", "locale": locale},
        "items": items,
        "currency": "BRL",
    }
    return json.dumps(order, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds on the generator's monotonic clock,
    relative to t0 (the moment request 0 was due)."""

    index: int
    #: When the request was due: index / rate.
    scheduled_s: float
    #: From the due time to the last byte of the response (or the error).
    latency_s: float
    #: How late the generator itself started the request (its own lag, not the server's).
    dispatch_lag_s: float
    #: How long the request waited for a pooled connection to be free.
    queue_wait_s: float
    #: HTTP status; 0 when no response arrived (see `error`).
    status: int
    order_id: str | None = None
    created_at: str | None = None
    error: str | None = None
    #: The connection closed before any response byte and the request was sent again.
    retried: bool = False
    #: The server answered with Idempotent-Replayed (it had already seen this key).
    replayed: bool = False


def _now() -> float:
    # Not loop.time(): uvloop's clock has 1 ms steps and is only updated once per loop
    # iteration, which would round and delay every latency.
    return time.perf_counter()


def _nearest_rank(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LoadResult:
    """Every request of one run plus the generator's own costs."""

    host: str
    port: int
    offered_rate_per_s: float
    duration_s: float
    connections: int
    records: tuple[RequestRecord, ...]
    #: Wall-clock (Unix) time of t0, to line records up with server timestamps.
    started_unix_s: float
    #: From t0 to the last response (or the end of the drain).
    elapsed_s: float
    #: CPU time (process_time) this process spent during the run.
    generator_cpu_s: float
    connects: int
    retries: int
    drain_timeouts: int
    key_prefix: str

    def status_counts(self) -> dict[str, int]:
        """Requests by outcome: 2xx, 3xx, 4xx, 5xx, and errors (no HTTP response)."""
        counts = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "other": 0, "errors": 0}
        for record in self.records:
            if record.status == 0:
                counts["errors"] += 1
            else:
                bucket = f"{record.status // 100}xx"
                counts[bucket if bucket in counts else "other"] += 1
        return counts

    @property
    def ok_records(self) -> list[RequestRecord]:
        return [r for r in self.records if 200 <= r.status < 300]

    @property
    def achieved_rate_per_s(self) -> float:
        """2xx responses per second from t0 to the last response."""
        return len(self.ok_records) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        """Percentiles of latency over requests that got an HTTP response, in ms."""
        values = sorted(r.latency_s for r in self.records if r.status != 0)
        out = {label: _nearest_rank(values, fraction) * 1000 for label, fraction in _PERCENTILES}
        out["max"] = (values[-1] * 1000) if values else math.nan
        return out

    def dispatch_lag_ms(self) -> dict[str, float]:
        """How late the generator started requests: p99 and max, in ms."""
        values = sorted(r.dispatch_lag_s for r in self.records)
        return {
            "p99": _nearest_rank(values, 0.99) * 1000,
            "max": (values[-1] * 1000) if values else math.nan,
        }

    @property
    def generator_cpu_ms_per_request(self) -> float:
        return self.generator_cpu_s * 1000 / len(self.records) if self.records else math.nan

    @property
    def generator_busy_share(self) -> float:
        """Generator CPU over elapsed time: 1.0 means one core was fully busy."""
        return self.generator_cpu_s / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def errors_by_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for record in self.records:
            if record.error is not None:
                kinds[record.error] = kinds.get(record.error, 0) + 1
        return kinds

    def summary(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict (without the per-request records)."""
        return {
            "host": self.host,
            "port": self.port,
            "offered_rate_per_s": self.offered_rate_per_s,
            "duration_s": self.duration_s,
            "connections": self.connections,
            "requests": len(self.records),
            "achieved_rate_per_s": round(self.achieved_rate_per_s, 2),
            "elapsed_s": round(self.elapsed_s, 3),
            "status_counts": self.status_counts(),
            "errors_by_kind": self.errors_by_kind(),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms().items()},
            "dispatch_lag_ms": {k: round(v, 3) for k, v in self.dispatch_lag_ms().items()},
            "max_queue_wait_ms": round(
                max((r.queue_wait_s for r in self.records), default=0.0) * 1000, 3
            ),
            "generator_cpu_s": round(self.generator_cpu_s, 3),
            "generator_cpu_ms_per_request": round(self.generator_cpu_ms_per_request, 4),
            "generator_busy_share_of_one_core": round(self.generator_busy_share, 3),
            "connects": self.connects,
            "retries": self.retries,
            "drain_timeouts": self.drain_timeouts,
            "replayed": sum(1 for r in self.records if r.replayed),
            "started_unix_s": self.started_unix_s,
            "key_prefix": self.key_prefix,
        }

    def format_summary(self) -> str:
        """A few human-readable lines."""
        counts = self.status_counts()
        lat = self.latency_ms()
        lag = self.dispatch_lag_ms()
        lines = [
            f"offered   {self.offered_rate_per_s:g}/s for {self.duration_s:g} s "
            f"= {len(self.records)} requests over {self.connections} connections",
            f"achieved  {self.achieved_rate_per_s:.1f} 2xx/s (elapsed {self.elapsed_s:.2f} s)",
            f"outcomes  2xx {counts['2xx']}  4xx {counts['4xx']}  5xx {counts['5xx']}  "
            f"errors {counts['errors']}"
            + (f"  3xx {counts['3xx']}" if counts["3xx"] else "")
            + (f"  other {counts['other']}" if counts["other"] else ""),
            "latency   "
            + "  ".join(f"{k} {v:.2f}" for k, v in lat.items())
            + " ms (from scheduled time)",
            f"generator {self.generator_cpu_ms_per_request:.3f} CPU-ms/request, "
            f"{self.generator_busy_share:.0%} of one core; dispatch lag p99 "
            f"{lag['p99']:.2f} ms, max {lag['max']:.2f} ms; connects {self.connects}, "
            f"retries {self.retries}",
        ]
        if self.errors_by_kind():
            lines.append(f"errors    {self.errors_by_kind()}")
        if self.generator_busy_share > _GENERATOR_BUSY_SHARE or lag["p99"] > 5.0:
            lines.append(
                "WARNING   the generator was busy or late: latency figures may include its own "
                "delays"
            )
        return "\n".join(lines)


# --- HTTP/1.1 on asyncio streams ---------------------------------------------------------


@dataclass(slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Connection:
    """One keep-alive connection, used by one request at a time."""

    __slots__ = ("reader", "served", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.served = 0

    async def exchange(self, request: bytes) -> _Response:
        try:
            self.writer.write(request)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _NoResponseError("closed before the response") from None
            raise ProtocolError("closed inside the response head") from None
        except (ConnectionResetError, BrokenPipeError):
            # The peer reset a connection we were reusing: the idle-close race again.
            raise _NoResponseError("reset before the response") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError("response head too large") from None
        response = await _read_rest(self.reader, head)
        self.served += 1
        return response

    def close(self) -> None:
        # Synchronous on purpose: it must also run from `finally` while a task is cancelled.
        self.writer.close()


def _parse_head(head: bytes) -> tuple[int, bool, dict[str, str]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes unless told.
    http10 = parts[0] == "HTTP/1.0"
    keep_alive = "keep-alive" in connection if http10 else "close" not in connection
    return int(parts[1]), keep_alive, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    for _ in range(_MAX_CHUNKS):
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            for _ in range(_MAX_TRAILER_LINES):
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    return bytes(body)
            raise ProtocolError("too many trailer lines")
        if len(body) + size > _MAX_BODY_BYTES:
            raise ProtocolError("chunked body too large")
        body += (await reader.readexactly(size + 2))[:-2]
    raise ProtocolError("too many chunks")


async def _read_rest(reader: asyncio.StreamReader, head: bytes) -> _Response:
    status, keep_alive, headers = _parse_head(head)
    try:
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= _MAX_BODY_BYTES:
                raise ProtocolError(f"content-length {length} out of range")
            body = await reader.readexactly(length)
        else:
            # Neither length nor chunks: the body ends when the server closes.
            body = await reader.read(_MAX_BODY_BYTES)
            keep_alive = False
    except asyncio.IncompleteReadError:
        raise ProtocolError("closed inside the response body") from None
    except ValueError:
        raise ProtocolError("bad content-length or chunk size") from None
    return _Response(status, headers, body, keep_alive)


async def _open(host: str, port: int, timeout_s: float) -> _Connection:
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port, limit=_STREAM_LIMIT_BYTES)
    return _Connection(reader, writer)


async def http_get_status(host: str, port: int, path: str, timeout_s: float = 2.0) -> int:
    """One GET on a fresh connection; the status code, or 0 if there was no answer."""
    host = loopback_host(host)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(timeout_s):
            connection = await _open(host, port, timeout_s)
            try:
                return (await connection.exchange(request.encode())).status
            finally:
                connection.close()
                await connection.writer.wait_closed()
    except (OSError, TimeoutError):
        return 0


class _Pool:
    """N connection slots; a slot holds a live connection or None (connect on first use).

    asyncio.Queue hands slots to waiters first come, first served, so a request that waits for
    a connection keeps its place in the arrival order.
    """

    def __init__(self, host: str, port: int, size: int, connect_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.connects = 0
        self._idle: asyncio.Queue[_Connection | None] = asyncio.Queue()
        self._all: set[_Connection] = set()
        for _ in range(size):
            self._idle.put_nowait(None)

    async def connect(self) -> _Connection:
        connection = await _open(self.host, self.port, self.connect_timeout_s)
        self.connects += 1
        self._all.add(connection)
        return connection

    async def prefill(self) -> None:
        """Open every connection before the clock starts; a slot that fails stays lazy."""
        slots = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        opened = await asyncio.gather(*(self.connect() for _ in slots), return_exceptions=True)
        for result in opened:
            self._idle.put_nowait(result if isinstance(result, _Connection) else None)

    async def acquire(self) -> _Connection | None:
        return await self._idle.get()

    def release(self, connection: _Connection | None) -> None:
        self._idle.put_nowait(connection)

    def discard(self, connection: _Connection) -> None:
        connection.close()
        self._all.discard(connection)

    async def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        for connection in list(self._all):
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()
        self._all.clear()


@dataclass
class _Run:
    """State of one run: the pool, the request template and the records so far."""

    pool: _Pool
    rate_per_s: float
    request_timeout_s: float
    key_prefix: str
    path: str
    rng: random.Random
    #: `Authorization: Bearer` of every request (None: sent without, as a stranger would).
    api_key: str | None = None
    t0: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    retries: int = 0

    def request_bytes(self, index: int) -> bytes:
        body = order_body(index, self.rng)
        head = (
            f"POST {self.path} HTTP/1.1\r\n"
            f"Host: {self.pool.host}:{self.pool.port}\r\n"
            "Content-Type: application/json\r\n"
            f"Idempotency-Key: {self.key_prefix}-{index}\r\n"
            + (f"Authorization: Bearer {self.api_key}\r\n" if self.api_key else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, index: int) -> None:
        due = self.t0 + index / self.rate_per_s
        dispatch_lag_s = _now() - due
        request = self.request_bytes(index)
        waiting = _now()
        connection = await self.pool.acquire()
        queue_wait_s = _now() - waiting
        status, retried, error = 0, False, None
        response: _Response | None = None
        clean = False
        try:
            async with asyncio.timeout(self.request_timeout_s):
                # The first try and at most one retry, only after an idle-close race.
                for attempt in range(2):
                    if connection is None:
                        connection = await self.pool.connect()
                    reused = connection.served > 0
                    try:
                        response = await connection.exchange(request)
                        break
                    except _NoResponseError:
                        self.pool.discard(connection)
                        connection = None
                        if attempt > 0 or not reused:
                            raise
                        retried = True
                        self.retries += 1
            clean = True
        except TimeoutError:
            error = "timeout"
        except _NoResponseError as exc:
            error = f"no response: {exc}"
        except ProtocolError as exc:
            error = f"protocol: {exc}"
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc.strerror or exc}"
        finally:
            # A connection in an unknown state (error, cancellation, Connection: close) is
            # closed; its slot goes back empty and the next user reconnects.
            if connection is not None and (
                not clean or response is None or not response.keep_alive
            ):
                self.pool.discard(connection)
                connection = None
            self.pool.release(connection)
        latency_s = _now() - due
        order_id = created_at = None
        replayed = False
        if response is not None:
            status = response.status
            replayed = response.headers.get("idempotent-replayed") == "true"
            if 200 <= status < 300:
                order_id, created_at = _order_fields(response.body)
        self.records.append(
            RequestRecord(
                index=index,
                scheduled_s=index / self.rate_per_s,
                latency_s=latency_s,
                dispatch_lag_s=dispatch_lag_s,
                queue_wait_s=queue_wait_s,
                status=status,
                order_id=order_id,
                created_at=created_at,
                error=error,
                retried=retried,
                replayed=replayed,
            )
        )


def _order_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        document = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    order_id, created_at = document.get("id"), document.get("created_at")
    return (
        order_id if isinstance(order_id, str) else None,
        created_at if isinstance(created_at, str) else None,
    )


def _check_bounds(rate_per_s: float, duration_s: float, connections: int) -> int:
    if not 0 < rate_per_s <= MAX_RATE_PER_S:
        raise ValueError(f"rate_per_s must be in (0, {MAX_RATE_PER_S:g}]")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S:g}]")
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be in [1, {MAX_CONNECTIONS}]")
    return max(1, round(rate_per_s * duration_s))


async def run_load(
    host: str,
    port: int,
    rate_per_s: float,
    duration_s: float,
    connections: int = DEFAULT_CONNECTIONS,
    *,
    path: str = "/orders",
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    key_prefix: str | None = None,
    seed: int = 0,
    api_key: str | None = None,
) -> LoadResult:
    """Offer `rate_per_s` orders per second for `duration_s` seconds; wait for the answers.

    Request i is due at t0 + i / rate and is started then, even if every connection is busy
    (it then waits for one, and that wait is part of its latency). After the last request is
    due, outstanding ones get `drain_timeout_s` to finish; the rest are cancelled and
    recorded as errors.
    """
    host = loopback_host(host)
    total = _check_bounds(rate_per_s, duration_s, connections)
    drain_timeout_s = min(max(drain_timeout_s, 0.0), MAX_DRAIN_TIMEOUT_S)
    pool = _Pool(host, port, connections, connect_timeout_s)
    run = _Run(
        pool=pool,
        rate_per_s=rate_per_s,
        request_timeout_s=request_timeout_s,
        key_prefix=key_prefix or f"bench-{uuid.uuid4().hex[:12]}",
        path=path,
        rng=random.Random(seed),
        api_key=api_key,
    )
    in_flight: dict[asyncio.Task[None], int] = {}
    drain_timeouts = 0
    try:
        await pool.prefill()
        cpu_start_s = time.process_time()
        run.t0 = _now() + _START_DELAY_S
        started_unix_s = time.time() + _START_DELAY_S
        for index in range(total):
            delay_s = run.t0 + index / rate_per_s - _now()
            # sleep(0) when behind still yields, so started requests make progress.
            await asyncio.sleep(max(0.0, delay_s))
            task = asyncio.create_task(run.send(index))
            in_flight[task] = index
            task.add_done_callback(lambda done: in_flight.pop(done, None))
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=drain_timeout_s)
        stragglers = dict(in_flight)
        for task in stragglers:
            task.cancel()
        if stragglers:
            await asyncio.wait(set(stragglers), timeout=1.0)
        end = _now()
        for index in stragglers.values():
            due_s = index / rate_per_s
            drain_timeouts += 1
            run.records.append(
                RequestRecord(
                    index=index,
                    scheduled_s=due_s,
                    latency_s=end - run.t0 - due_s,
                    dispatch_lag_s=0.0,
                    queue_wait_s=0.0,
                    status=0,
                    error="unfinished at drain timeout",
                )
            )
        last_done = max(
            (r.scheduled_s + r.latency_s for r in run.records if r.status != 0), default=0.0
        )
        generator_cpu_s = time.process_time() - cpu_start_s
    finally:
        for task in list(in_flight):
            task.cancel()
        await pool.close()
    records = tuple(sorted(run.records, key=lambda r: r.index))
    return LoadResult(
        host=host,
        port=port,
        offered_rate_per_s=rate_per_s,
        duration_s=duration_s,
        connections=connections,
        records=records,
        started_unix_s=started_unix_s,
        elapsed_s=last_done if last_done > 0 else end - run.t0,
        generator_cpu_s=generator_cpu_s,
        connects=pool.connects,
        retries=run.retries,
        drain_timeouts=drain_timeouts,
        key_prefix=run.key_prefix,
    )


def install_uvloop() -> bool:
    """Use uvloop when installed (uvicorn[standard] brings it): less generator CPU per request."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Open-loop constant-rate load on POST /orders (loopback only)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--drain-timeout-s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    parser.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ACME_API_KEY"),
        help="sent as `Authorization: Bearer` (default $ACME_API_KEY; from `acme keys create`)",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        host = loopback_host(args.host)
        _check_bounds(args.rate, args.duration_s, args.connections)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    uvloop_used = False if args.no_uvloop else install_uvloop()
    result = asyncio.run(
        run_load(
            host,
            args.port,
            args.rate,
            args.duration_s,
            args.connections,
            request_timeout_s=args.request_timeout_s,
            drain_timeout_s=args.drain_timeout_s,
            api_key=args.api_key,
        )
    )
    print(result.format_summary())
    print(f"event loop {'uvloop' if uvloop_used else 'asyncio'}")
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    return 0 if result.status_counts()["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
