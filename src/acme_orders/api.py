"""The HTTP API (Litestar): thin routes over `OrderService`; every error mapped in one place.

Errors follow RFC 9457 problem details (`application/problem+json`); validation problems carry
an `errors` list naming every bad field. A database that is down or slow gives a quick 503 with
`Retry-After`, never a hang; Redis plays no part in answering a request.
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
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from acme_orders.contract import decode_order
from acme_orders.domain import FieldError, OrderDraft
from acme_orders.http_telemetry import http_telemetry
from acme_orders.openapi import IDEMPOTENCY_KEY_PATTERN, PROBLEM_JSON, openapi_document
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
        headers=problem.headers,
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
        draft, key = await _order_from(request)
        try:
            placed = await service.place_order(draft, idempotency_key=key)
        except IdempotencyConflict as exc:
            # 409: the key is taken by another request's order (a conflict with the state of
            # the server, not a fault of this body, which is valid on its own).
            raise Problem(
                409, "Idempotency-Key reused", str(exc), kind="idempotency-key-reused"
            ) from None
        headers = {"Location": f"/orders/{placed.order['id']}"}
        if placed.replayed:
            headers["Idempotent-Replayed"] = "true"
            metrics.idempotent_replays.inc()
        else:
            metrics.orders_created.inc()
        return _json_response(placed.order, 201, headers)

    @get("/orders/{order_id:str}", include_in_schema=False)
    async def read_order(order_id: FromPath[str], state: State) -> Response[bytes]:
        service: OrderService = state.service
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
        return _json_response(view)

    return [create_order, read_order]


def _operations_handlers(metrics: OrdersMetrics) -> list[Any]:
    """Probes, metrics and the OpenAPI document: what operators and tools read."""

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

    @get("/metrics", summary="Prometheus metrics of this API process.", include_in_schema=False)
    async def prometheus_metrics() -> Response[bytes]:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    document = _json.encode(openapi_document())

    @get("/schema/openapi.json", include_in_schema=False)
    async def openapi_json() -> Response[bytes]:
        return Response(document, media_type="application/json")

    @get("/schema", include_in_schema=False)
    async def openapi_page() -> Response[str]:
        return Response(_SCHEMA_PAGE, media_type="text/html")

    return [live, ready, prometheus_metrics, openapi_json, openapi_page]


def build_app(
    *,
    lifespan: Callable[[Litestar], AbstractAsyncContextManager[None]],
    max_body_bytes: int,
    metrics: OrdersMetrics,
    extra_handlers: Sequence[Any] = (),
) -> Litestar:
    """The Litestar application.

    `lifespan` opens the clients and sets `app.state.service` (an `OrderService`) and
    `app.state.ready_check` (an async callable that raises when PostgreSQL does not answer).
    """
    return Litestar(
        route_handlers=[
            *_order_handlers(metrics),
            *_operations_handlers(metrics),
            *extra_handlers,
        ],
        middleware=[http_telemetry(metrics)],
        exception_handlers={Exception: _on_exception},
        request_max_body_size=max_body_bytes,
        openapi_config=None,
        lifespan=[lifespan],
        debug=False,
    )
