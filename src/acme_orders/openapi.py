"""The OpenAPI 3.1 document of the order API, built from the contract's Structs.

The schemas are msgspec's own JSON Schema of `acme_orders.contract` (the types the API decodes
with), so the document cannot say something the validator does not do. The operations, their
headers, the API key each needs, and every answer (201, 400, 401, 403, 404, 413, 415, 422, 429,
503, as `application/problem+json` with the problem schema) are written down here, next to one
another; `tests/contract/test_openapi.py` holds the API to them, schemathesis fuzzes against
them, and a generated client places orders with them.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

import msgspec

from acme_orders.contract import OrderIn, OrderOut, ProblemOut

__all__ = ["IDEMPOTENCY_KEY_PATTERN", "PROBLEM_JSON", "SAMPLE_ORDER", "openapi_document"]

PROBLEM_JSON: Final = "application/problem+json"
IDEMPOTENCY_KEY_PATTERN: Final = r"^[\x21-\x7e]{1,255}$"

SAMPLE_ORDER: Final = {
    "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
    "items": [{"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}],
    "currency": "BRL",
}
SAMPLE_ORDER_OUT: Final = {
    "id": "01a24e24-b3af-7627-b6d1-09fdc472d4e0",
    "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
    "currency": "BRL",
    "items": [
        {
            "sku": "CANECA-01",
            "name": "Caneca",
            "quantity": 2,
            "unit_price": "19.90",
            "line_total": "39.80",
        }
    ],
    "total": "39.80",
    "created_at": "2026-12-07T03:10:21.145233+00:00",
    "trace_id": "ffdd6c17099e9deaee153919c21319e1",
    "notification": {
        "status": "pending",
        "updated_at": None,
        "attempts": 0,
        "detail": None,
        "event_id": "01a24e24-b3af-7105-a162-9e564a59d2f2",
        "stream_id": None,
    },
}
SAMPLE_PROBLEM: Final = {
    "type": "https://acme.example/problems/validation",
    "title": "Invalid order",
    "status": 422,
    "detail": "2 field(s) are invalid.",
    "instance": "/orders",
    "errors": [
        {"field": "customer.email", "message": "is not a valid e-mail address"},
        {"field": "items[0].quantity", "message": "must be between 1 and 10000"},
    ],
}

_TRACE_ID = {
    "description": "The order's trace id (W3C, 32 hex digits): give it to an operator, or look "
    "it up with `acme trace`.",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}


def _problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {
            PROBLEM_JSON: {
                "schema": {"$ref": "#/components/schemas/ProblemOut"},
            }
        },
    }
    if headers:
        answer["headers"] = headers
    return answer


_RETRY_AFTER: Final = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_UNAVAILABLE = "The order database is not answering (or too slow): nothing was stored; retry."
#: The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers) on every answer of a
#: rate-limited operation while the limiter answers (it fails open without Redis).
_RATE_LIMIT_HEADERS: Final = {
    "RateLimit-Policy": {
        "description": 'The per-key quota: `"per-key";q=<burst>;w=<seconds>` (ACME_API_BURST '
        "requests per the time a full bucket takes to refill at ACME_API_RATE_PER_S).",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left: `"per-key";r=<requests you may still make at once>;'
        "t=<seconds until the bucket is full again>`.",
        "schema": {"type": "string"},
    },
}
_TOO_MANY = (
    "Over the rate limit of this API key (of the client address without one): nothing was "
    "done; retry after `Retry-After` seconds."
)


def _rate_limited(operation: dict[str, Any]) -> dict[str, Any]:
    """Adds the 429 answer, and the RateLimit fields to every answer of an operation."""
    responses = operation["responses"]
    responses["429"] = _problem(_TOO_MANY, **{"Retry-After": _RETRY_AFTER})
    for answer in responses.values():
        answer["headers"] = {**answer.get("headers", {}), **_RATE_LIMIT_HEADERS}
    return operation


_API_KEY_SCHEME: Final = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key, `acme_<id>_<secret>`, from `acme keys create --scope ...`. "
    "Its scopes are `orders:write` (place orders) and `orders:read` (read them); each "
    "operation names the one it needs.",
}
_CHALLENGE: Final = {
    "description": 'RFC 6750\'s challenge: `Bearer realm="acme-orders"`, with '
    '`error="invalid_token"` for a key that was sent, or `error="insufficient_scope"` and '
    "the scope needed.",
    "schema": {"type": "string"},
}


def _auth_problems(scope: str) -> dict[str, Any]:
    """The 401 and 403 of an operation that needs an API key with `scope`."""
    return {
        "401": _problem(
            "No API key, or one that is malformed, unknown or revoked: nothing was done.",
            **{"WWW-Authenticate": _CHALLENGE},
        ),
        "403": _problem(
            f"The API key does not have the scope `{scope}`: nothing was done.",
            **{"WWW-Authenticate": _CHALLENGE},
        ),
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The document, built once per process (pure: no I/O)."""
    (order_in, order_out, _problem_schema), schemas = msgspec.json.schema_components(
        [OrderIn, OrderOut, ProblemOut], ref_template="#/components/schemas/{name}"
    )
    order_json = {"schema": order_out, "example": SAMPLE_ORDER_OUT}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AcME Orders",
            "version": "1.0.0",
            "description": "Orders over HTTP, with a guaranteed confirmation e-mail. Errors "
            "are RFC 9457 problem details (`application/problem+json`). The order operations "
            "need an API key (`Authorization: Bearer <key>`, from `acme keys create`) with "
            "their scope; the health probes do not.",
        },
        "paths": {
            "/orders": {"post": _rate_limited(_create_order(order_in, order_json))},
            "/orders/{order_id}": {"get": _rate_limited(_read_order(order_json))},
            **_health_paths(),
        },
        "components": {"schemas": schemas, "securitySchemes": {"apiKey": _API_KEY_SCHEME}},
    }


def _create_order(order_in: dict[str, Any], order_json: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "createOrder",
        "summary": "Place an order; the confirmation e-mail follows asynchronously.",
        "description": "The order is stored with its notification event in one transaction and "
        "answered at once; the e-mail is sent by the notifier, usually within tens of "
        "milliseconds. Totals are computed by the server. A bad order is answered with every "
        "invalid field at once (422, `errors`).",
        "tags": ["orders"],
        "security": [{"apiKey": ["orders:write"]}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retry-safe placement: a request repeated with the same key (for "
                "`ACME_IDEMPOTENCY_TTL_S`, 24 h) gets the first order back "
                "(`Idempotent-Replayed: true`) instead of a second order; the same key with a "
                "different body is refused (409).",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": order_in,
                    "examples": {"order": {"value": SAMPLE_ORDER}},
                }
            },
        },
        "responses": {
            "201": {
                "description": "The order was placed (or, with a known Idempotency-Key, found).",
                "headers": {
                    "Location": {
                        "description": "The order's URL.",
                        "schema": {"type": "string"},
                    },
                    "Idempotent-Replayed": {
                        "description": "`true` when this is the order an earlier request with "
                        "the same Idempotency-Key placed.",
                        "schema": {"type": "string", "enum": ["true"]},
                    },
                    "X-Trace-Id": _TRACE_ID,
                },
                "content": {"application/json": order_json},
                "links": {
                    "GetOrder": {
                        "operationId": "readOrder",
                        "parameters": {"order_id": "$response.body#/id"},
                        "description": "The order just placed, with its notification status.",
                    }
                },
            },
            "400": _problem("The body is not JSON, or the Idempotency-Key is malformed."),
            **_auth_problems("orders:write"),
            "413": _problem("The body is larger than `ACME_MAX_BODY_BYTES`."),
            "415": _problem("The body is not sent as `application/json`."),
            "409": _problem("The Idempotency-Key was used for an order with another body."),
            "422": {
                **_problem("Invalid fields: every one is named in `errors`."),
                "content": {
                    PROBLEM_JSON: {
                        "schema": {"$ref": "#/components/schemas/ProblemOut"},
                        "example": SAMPLE_PROBLEM,
                    }
                },
            },
            "503": _problem(_UNAVAILABLE, **{"Retry-After": _RETRY_AFTER}),
        },
    }


def _read_order(order_json: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": "readOrder",
        "summary": "An order, its notification status and timeline.",
        "tags": ["orders"],
        "security": [{"apiKey": ["orders:read"]}],
        "parameters": [
            {
                "name": "order_id",
                "in": "path",
                "required": True,
                "description": "The order's id (a UUID), as `POST /orders` answered it.",
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": {
                "description": "The order, with `timeline`: every step of its e-mail.",
                "headers": {"X-Trace-Id": _TRACE_ID},
                "content": {"application/json": order_json},
            },
            **_auth_problems("orders:read"),
            "404": _problem("No order has this id."),
            "503": _problem(_UNAVAILABLE, **{"Retry-After": _RETRY_AFTER}),
        },
    }


def _health_paths() -> dict[str, Any]:
    status = {
        "type": "object",
        "properties": {"status": {"type": "string"}, "postgres": {"type": "string"}},
        "required": ["status"],
    }

    def health(summary: str, *answers: str) -> dict[str, Any]:
        return {
            "operationId": summary.split(":")[0],
            "summary": summary.split(": ", 1)[1],
            "tags": ["health"],
            "security": [],  # open: a probe carries no key
            "responses": {
                code: {"description": text, "content": {"application/json": {"schema": status}}}
                for code, text in (answer.split(" ", 1) for answer in answers)
            },
        }

    return {
        "/health/live": {"get": health("live: The process is up.", "200 Up.")},
        "/health/ready": {
            "get": health(
                "ready: PostgreSQL answers and the schema is migrated (Redis is not "
                "needed to take orders).",
                "200 Ready.",
                "503 Not ready: the database does not answer or is not migrated.",
            )
        },
    }
