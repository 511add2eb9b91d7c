"""An open-loop order client that retries with the same Idempotency-Key until the API answers.

bench/loadgen.py measures a server that stays up: a request whose connection is refused or
reset is recorded as an error and never sent again. When the API process itself is killed, or
PostgreSQL goes away, a real client retries the same order with the same Idempotency-Key until
it gets an answer; that is what this client does, so the scenario can check that every order a
client placed exists exactly once. Each attempt uses a fresh connection (`Connection: close`),
so an API restart never leaves it holding a dead keep-alive connection.

Request i is due at t0 + i/rate (open loop). A 5xx, a refused or reset connection or a timeout
is retried with exponential backoff and jitter (from `retry_delay_s`, doubling up to 2 s, or the
server's Retry-After if longer), so that thousands of waiting clients do not hammer an API that
just came back in lock-step; a 2xx or 4xx is final.
Every attempt is bounded by `attempt_timeout_s`, every order by `give_up_after_s` and
`max_attempts`. Traffic goes to loopback only.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from bench.loadgen import loopback_host, order_body

__all__ = ["Attempt", "KeyedOrder", "RetryRun", "post_order", "run_retrying_load"]

_MAX_RESPONSE_BYTES: Final = 1024 * 1024
_MAX_RETRY_DELAY_S: Final = 2.0

OrderBody = Callable[[int, random.Random], bytes]


@dataclass(frozen=True, slots=True)
class Attempt:
    #: HTTP status, 0 when no response arrived (refused, reset, timed out).
    status: int
    #: From sending the request to its answer (or the error).
    latency_s: float
    error: str | None = None
    #: Unix time the attempt was sent.
    sent_at: float = 0.0


@dataclass
class KeyedOrder:
    """One order as the client saw it: every attempt, and the answer it ended with."""

    index: int
    key: str
    attempts: list[Attempt] = field(default_factory=list)
    status: int = 0
    order_id: str | None = None
    created_at: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class RetryRun:
    orders: tuple[KeyedOrder, ...]
    elapsed_s: float

    @property
    def accepted(self) -> list[KeyedOrder]:
        return [o for o in self.orders if 200 <= o.status < 300 and o.order_id]

    def attempts_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for order in self.orders:
            for attempt in order.attempts:
                label = str(attempt.status) if attempt.status else "no-response"
                counts[label] = counts.get(label, 0) + 1
        return counts

    def slowest(self, status: int, count: int = 5) -> list[Attempt]:
        """The `count` longest attempts that ended with `status` (0 = no response)."""
        found = [a for o in self.orders for a in o.attempts if a.status == status]
        return sorted(found, key=lambda a: a.latency_s, reverse=True)[:count]

    def slowest_attempt_s(self, status: int) -> float:
        """The longest attempt that ended with `status` (0 = no response)."""
        return max(
            (a.latency_s for o in self.orders for a in o.attempts if a.status == status),
            default=0.0,
        )


def _request(host: str, port: int, body: bytes, key: str | None, api_key: str | None) -> bytes:
    head = [
        "POST /orders HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if key is not None:
        head.append(f"Idempotency-Key: {key}")
    if api_key is not None:
        head.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def post_order(
    host: str,
    port: int,
    body: bytes,
    key: str | None,
    timeout_s: float = 5.0,
    *,
    api_key: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One POST /orders on a fresh connection: (status, lower-cased headers, body).

    Raises OSError or TimeoutError when no complete answer arrives."""
    host = loopback_host(host)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_request(host, port, body, key, api_key))
            await writer.drain()
            raw = await reader.read(_MAX_RESPONSE_BYTES)
            # Connection: close: the answer ends when the server closes.
            for _ in range(64):
                more = await reader.read(_MAX_RESPONSE_BYTES)
                if not more:
                    break
                raw += more
        finally:
            writer.close()
    head, sep, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionResetError(f"no complete HTTP answer ({len(raw)} bytes)")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, payload


async def _place(
    order: KeyedOrder,
    host: str,
    port: int,
    body: bytes,
    rng: random.Random,
    *,
    attempt_timeout_s: float,
    retry_delay_s: float,
    give_up_after_s: float,
    max_attempts: int,
    api_key: str | None,
) -> None:
    started = time.monotonic()
    for attempt in range(max_attempts):
        sent = time.monotonic()
        sent_at = time.time()
        delay_s = min(retry_delay_s * 2**attempt, _MAX_RETRY_DELAY_S)
        try:
            status, headers, payload = await post_order(
                host, port, body, order.key, attempt_timeout_s, api_key=api_key
            )
        except (OSError, TimeoutError) as exc:
            order.attempts.append(Attempt(0, time.monotonic() - sent, type(exc).__name__, sent_at))
        else:
            order.attempts.append(Attempt(status, time.monotonic() - sent, None, sent_at))
            order.status = status
            if status < 500:
                if 200 <= status < 300:
                    document = json.loads(payload)
                    order.order_id = str(document["id"])
                    order.created_at = str(document["created_at"])
                    order.replayed = headers.get("idempotent-replayed") == "true"
                return
            retry_after = headers.get("retry-after", "")
            if retry_after.isdigit():
                delay_s = max(delay_s, min(float(retry_after), _MAX_RETRY_DELAY_S))
        delay_s *= rng.uniform(0.5, 1.5)
        if time.monotonic() - started + delay_s > give_up_after_s:
            return
        await asyncio.sleep(delay_s)


async def run_retrying_load(
    host: str,
    port: int,
    rate_per_s: float,
    duration_s: float,
    *,
    key_prefix: str,
    seed: int = 0,
    body: OrderBody = order_body,
    attempt_timeout_s: float = 5.0,
    retry_delay_s: float = 0.25,
    give_up_after_s: float = 120.0,
    max_attempts: int = 500,
    api_key: str | None = None,
) -> RetryRun:
    """Places round(rate * duration) orders open-loop, each retried until answered."""
    if not (0 < rate_per_s <= 1_000 and 0 < duration_s <= 600):
        raise ValueError("rate_per_s must be in (0, 1000] and duration_s in (0, 600]")
    rng = random.Random(seed)
    jitter = random.Random(seed + 1)
    total = max(1, round(rate_per_s * duration_s))
    orders = tuple(KeyedOrder(index=i, key=f"{key_prefix}-{i}") for i in range(total))
    bodies = [body(i, rng) for i in range(total)]
    t0 = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    try:
        for order, payload in zip(orders, bodies, strict=True):
            await asyncio.sleep(max(0.0, t0 + order.index / rate_per_s - time.monotonic()))
            tasks.append(
                asyncio.create_task(
                    _place(
                        order,
                        host,
                        port,
                        payload,
                        jitter,
                        attempt_timeout_s=attempt_timeout_s,
                        retry_delay_s=retry_delay_s,
                        give_up_after_s=give_up_after_s,
                        max_attempts=max_attempts,
                        api_key=api_key,
                    )
                )
            )
        # Bounded from t0, however late a busy event loop started the last orders.
        deadline_s = duration_s + give_up_after_s + attempt_timeout_s
        await asyncio.wait(tasks, timeout=max(0.0, t0 + deadline_s - time.monotonic()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return RetryRun(orders, time.monotonic() - t0)
