"""ASGI middleware: one OpenTelemetry server span and one duration sample per HTTP request.

Runs after routing, so spans and the histogram are labelled by route *template*
(`/orders/{order_id}`), never by raw path: label cardinality stays bounded. A caller's
`traceparent` header is continued; every response carries `X-Trace-Id`, the id an operator
passes to the tracing backend or finds in `acme trace`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from acme_orders.telemetry import OrdersMetrics
from acme_runtime.tracing import tracer

__all__ = ["http_telemetry"]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


def http_telemetry(metrics: OrdersMetrics) -> Callable[[ASGIApp], ASGIApp]:
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            route = str(scope.get("path_template") or "unmatched")
            method = str(scope.get("method", "GET"))
            status = 500
            started = time.perf_counter()
            parent = propagate.extract(_headers(scope))
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "http.route": route,
                "url.path": scope.get("path", ""),
                "url.scheme": scope.get("scheme", "http"),
            }
            with tracer().start_as_current_span(
                f"{method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
            ) as span:
                span_context = span.get_span_context()
                trace_header = (
                    [(b"x-trace-id", format(span_context.trace_id, "032x").encode())]
                    if span_context.is_valid
                    else []
                )

                async def send_with_trace_id(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = int(message["status"])
                        message["headers"] = [*message.get("headers", []), *trace_header]
                    await send(message)

                try:
                    await app(scope, receive, send_with_trace_id)
                finally:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    metrics.http_duration.labels(route, method, str(status)).observe(
                        time.perf_counter() - started
                    )

        return middleware

    return factory
