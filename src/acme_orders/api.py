"""The HTTP API (Litestar): thin routes over `OrderService`; every error mapped in one place.

Both order routes need an API key (`Authorization: Bearer`, acme_orders.auth) with their scope:
401 without a valid one, 403 without the scope, before the body is read. Health probes and the
OpenAPI document are open; /metrics is served on a listener of its own, not here.

Errors follow RFC 9457 problem details (`application/problem+json`); validation problems carry
an `errors` list naming every bad field. A database that is down or slow gives a quick 503 with
`Retry-After`, never a hang. Redis plays no part in taking an order: the per-key rate limit
(`acme_orders.ratelimit`, 429 with `Retry-After`) asks it, and lets requests through when it
does not answer.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import asyncpg
import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from acme_orders.auth import Authenticator, Caller, Unauthenticated
from acme_orders.contract import decode_order
from acme_orders.domain import FieldError, OrderDraft
from acme_orders.http_telemetry import http_telemetry
from acme_orders.openapi import IDEMPOTENCY_KEY_PATTERN, PROBLEM_JSON, openapi_document
from acme_orders.ratelimit import RateLimiter
from acme_orders.service import IdempotencyConflict, OrderService
from acme_orders.telemetry import OrdersMetrics

__all__ = ["build_app"]

_SCHEMA_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AcME Orders API</title></head>
<body><h1>AcME Orders API</h1>
<p>The OpenAPI 3.1 document: <a href="/schema/openapi.json">/schema/openapi.json</a>.
Generate a client from it, for example
<code>openapi-python-client generate --url http://HOST/schema/openapi.json</code>.</p>
</body></html>
"""

log = structlog.get_logger(__name__)

_IDEMPOTENCY_KEY_RE: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)
#: Where a request keeps the RateLimit fields its answer carries, errors included.
_RATE_LIMIT_STATE: Final = "rate_limit_headers"
_json = msgspec.json.Encoder(decimal_format="string")


class Problem(Exception):
    """An RFC 9457 problem, raised anywhere in a handler and rendered by `_problem_response`."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        kind: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.errors = errors
        self.headers = headers or {}


def _problem_response(request: Request[Any, Any, Any], problem: Problem) -> Response[bytes]:
    body: dict[str, Any] = {
        "type": f"https://acme.example/problems/{problem.kind}",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
    }
    if problem.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in problem.errors]
    return Response(
        _json.encode(body),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        # A request the rate limit let through keeps its RateLimit fields on an error too.
        headers={**getattr(request.state, _RATE_LIMIT_STATE, {}), **problem.headers},
    )


def _on_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, Problem):
        return _problem_response(request, exc)
    if isinstance(exc, HTTPException):
        kinds = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
        problem = Problem(
            exc.status_code,
            exc.detail or "HTTP error",
            exc.detail or "",
            kind=kinds.get(exc.status_code, "http-error"),
        )
        if exc.status_code == 413:
            problem.title = "Request body too large"
            problem.detail = "The request body exceeds the size this API accepts."
        # e.g. `Allow` on a 405: the methods this path does answer.
        problem.headers = {str(k): str(v) for k, v in (exc.headers or {}).items()}
        return _problem_response(request, problem)
    if isinstance(exc, asyncpg.PostgresError | OSError | asyncio.TimeoutError):
        log.warning("database_unavailable", error=repr(exc), path=request.url.path)
        return _problem_response(
            request,
            Problem(
                503,
                "Service unavailable",
                "The order database is not answering; retry shortly.",
                kind="unavailable",
                headers={"Retry-After": "1"},
            ),
        )
    log.exception("unhandled_error", path=request.url.path)
    return _problem_response(
        request,
        Problem(
            HTTP_500_INTERNAL_SERVER_ERROR,
            "Internal error",
            "Something went wrong on our side.",
            kind="internal",
        ),
    )


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        _json.encode(body), status_code=status, media_type="application/json", headers=headers
    )


async def _admit(
    request: Request[Any, Any, Any], state: State, key_id: str | None = None
) -> dict[str, str]:
    """Takes the request from its caller's rate-limit bucket (the API key's id when the
    request was authenticated, else the client address); the RateLimit fields to answer with,
    or the 429 Problem. Nothing when the limit is off or Redis does not answer (fail open)."""
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        return {}
    if key_id is not None:
        caller = f"key:{key_id}"
    else:
        caller = f"addr:{request.client.host if request.client else 'unknown'}"
    decision = await limiter.take(caller)
    if decision is None:
        return {}
    headers = decision.headers()
    if not decision.allowed:
        raise Problem(
            429,
            "Too many requests",
            f"Over the rate limit of this API key ({decision.policy.rate_per_s:g} requests/s, "
            f"bursts of {decision.policy.burst}); retry in {decision.retry_after_s} s.",
            kind="rate-limited",
            headers=headers,
        )
    setattr(request.state, _RATE_LIMIT_STATE, headers)
    return headers


async def _caller(request: Request[Any, Any, Any], state: State, scope: str) -> Caller:
    """The API key of the request, holding `scope`; else the 401 or 403 Problem (RFC 6750's
    challenge in `WWW-Authenticate`). Decided before the body is read."""
    authenticator: Authenticator = state.authenticator
    try:
        caller = await authenticator.caller(request.headers.get("authorization"))
    except Unauthenticated as exc:
        challenge = 'Bearer realm="acme-orders"'
        if not exc.missing:
            challenge += ', error="invalid_token"'
        raise Problem(
            401,
            "Unauthenticated",
            str(exc),
            kind="unauthenticated",
            headers={"WWW-Authenticate": challenge},
        ) from None
    if scope not in caller.scopes:
        raise Problem(
            403,
            "Insufficient scope",
            f"This API key ({caller.key_id}) does not have the scope {scope}.",
            kind="insufficient-scope",
            headers={
                "WWW-Authenticate": f'Bearer realm="acme-orders", error="insufficient_scope", '
                f'scope="{scope}"'
            },
        )
    return caller


def _idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise Problem(
            400,
            "Invalid Idempotency-Key",
            "Idempotency-Key must be 1-255 visible ASCII characters.",
            kind="invalid-idempotency-key",
            errors=[FieldError("Idempotency-Key", "must be 1-255 visible ASCII chars")],
        )
    return key


async def _order_from(request: Request[Any, Any, Any]) -> tuple[OrderDraft, str | None]:
    """The order of a `POST /orders` request and its Idempotency-Key, or the Problem to answer."""
    if "json" not in request.headers.get("content-type", ""):
        raise Problem(
            415,
            "Unsupported media type",
            "Send the order as application/json.",
            kind="unsupported-media-type",
        )
    key = _idempotency_key(request)
    try:
        draft = decode_order(await request.body())
    except msgspec.DecodeError as exc:
        raise Problem(
            400, "Malformed JSON", f"The body is not valid JSON: {exc}", kind="malformed-json"
        ) from None
    if isinstance(draft, list):
        raise Problem(
            422,
            "Invalid order",
            f"{len(draft)} field(s) are invalid.",
            kind="validation",
            errors=draft,
        )
    return draft, key


def _order_handlers(metrics: OrdersMetrics) -> list[Any]:
    # The OpenAPI document is acme_orders.openapi's, built from the contract: Litestar's own
    # is switched off, and these handlers' documentation lives there.
    @post("/orders", status_code=201, include_in_schema=False)
    async def create_order(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        service: OrderService = state.service
        caller = await _caller(request, state, "orders:write")
        limits = await _admit(request, state, caller.key_id)
        draft, key = await _order_from(request)
        try:
            placed = await service.place_order(draft, idempotency_key=key, api_key_id=caller.key_id)
        except IdempotencyConflict as exc:
            # 409: the key is taken by another request's order (a conflict with the state of
            # the server, not a fault of this body, which is valid on its own).
            raise Problem(
                409, "Idempotency-Key reused", str(exc), kind="idempotency-key-reused"
            ) from None
        headers = {"Location": f"/orders/{placed.order['id']}", **limits}
        if placed.replayed:
            headers["Idempotent-Replayed"] = "true"
            metrics.idempotent_replays.inc()
        else:
            metrics.orders_created.inc()
        return _json_response(placed.order, 201, headers)

    @get("/orders/{order_id:str}", include_in_schema=False)
    async def read_order(
        request: Request[Any, Any, Any], order_id: FromPath[str], state: State
    ) -> Response[bytes]:
        service: OrderService = state.service
        caller = await _caller(request, state, "orders:read")
        limits = await _admit(request, state, caller.key_id)
        try:
            parsed = uuid.UUID(order_id)
        except ValueError:
            raise Problem(
                404, "Order not found", f"No order has the id {order_id!r}.", kind="not-found"
            ) from None
        view = await service.get_order(parsed)
        if view is None:
            raise Problem(
                404, "Order not found", f"No order has the id {order_id}.", kind="not-found"
            )
        return _json_response(view, headers=limits)

    return [create_order, read_order]


def _operations_handlers() -> list[Any]:
    """Probes and the OpenAPI document, open to every caller. /metrics is not here: the API
    serves it on its own listener (ACME_METRICS_PORT, acme_orders.app)."""

    @get("/health/live", include_in_schema=False)
    async def live() -> Response[bytes]:
        return _json_response({"status": "ok"})

    @get("/health/ready", include_in_schema=False)
    async def ready(state: State) -> Response[bytes]:
        try:
            await state.ready_check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return _json_response({"status": "unavailable", "postgres": repr(exc)}, 503)
        return _json_response({"status": "ok", "postgres": "ok"})

    document = _json.encode(openapi_document())

    @get("/schema/openapi.json", include_in_schema=False)
    async def openapi_json() -> Response[bytes]:
        return Response(document, media_type="application/json")

    @get("/schema", include_in_schema=False)
    async def openapi_page() -> Response[str]:
        return Response(_SCHEMA_PAGE, media_type="text/html")

    return [live, ready, openapi_json, openapi_page]


def build_app(
    *,
    lifespan: Callable[[Litestar], AbstractAsyncContextManager[None]],
    max_body_bytes: int,
    metrics: OrdersMetrics,
    extra_handlers: Sequence[Any] = (),
) -> Litestar:
    """The Litestar application.

    `lifespan` opens the clients and sets `app.state.service` (an `OrderService`),
    `app.state.authenticator` (an `Authenticator`) and `app.state.ready_check` (an async
    callable that raises when PostgreSQL does not answer)."""
    return Litestar(
        route_handlers=[
            *_order_handlers(metrics),
            *_operations_handlers(),
            *extra_handlers,
        ],
        middleware=[http_telemetry(metrics)],
        exception_handlers={Exception: _on_exception},
        request_max_body_size=max_body_bytes,
        openapi_config=None,
        # Logging is the process's (acme_runtime.logs: structlog's JSON lines, the standard
        # library's loggers at WARNING); Litestar's default would reconfigure the root logger
        # at INFO with a plain-text handler. Errors are logged by `_on_exception`.
        logging_config=None,
        lifespan=[lifespan],
        debug=False,
    )
