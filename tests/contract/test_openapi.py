"""The HTTP contract: the served OpenAPI document, the validator and the running API agree.

The document is served by a real `acme api` process (real PostgreSQL and Redis behind it). It
must be valid OpenAPI 3.1 with examples that validate against their own schemas; the validator
must accept exactly the orders the document's JSON Schema accepts; schemathesis, with all its
checks and its stateful phase, must find nothing; and a client generated from it with
openapi-python-client must place an order and read it back with its typed models.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from acme_cli.embedded import free_port
from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.openapi import openapi_document
from tests.harness import api_key, eventually
from tests.strategies import invalid_bodies, json_values, valid_orders

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _order_schema() -> dict[str, Any]:
    """The request body's schema, self-contained (the components as `$defs`)."""
    defs = _rewrite_refs(openapi_document()["components"]["schemas"])
    return {"$ref": "#/$defs/OrderIn", "$defs": defs}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                value.replace("#/components/schemas/", "#/$defs/")
                if key == "$ref"
                else _rewrite_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


ORDER_SCHEMA = _order_schema()
ORDER_VALIDATOR = Draft202012Validator(ORDER_SCHEMA)


@pytest.fixture
def live_api(database_url: str, redis_url: str) -> Iterator[str]:
    """`acme api` as its own process on a free loopback port; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "ACME_DATABASE_URL": database_url,
        "ACME_REDIS_URL": redis_url,
        "ACME_HTTP_HOST": "127.0.0.1",
        "ACME_HTTP_PORT": str(port),
        "ACME_LOG_FORMAT": "json",
        "ACME_LOG_LEVEL": "warning",
        "ACME_METRICS_PORT": "0",  # its metrics listener is not what this test is about
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "acme_cli.main", "api"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_until_ready(base, process))
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


async def _until_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:

        async def ready() -> bool:
            assert process.poll() is None, "acme api exited during start-up"
            try:
                return (await client.get("/health/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout_s=60, what="acme api to be ready")


@pytest.fixture
def live_key(database_url: str) -> str:
    """An API key with both scopes in the live API's database."""
    return asyncio.run(api_key(database_url))


@pytest.fixture
def served(live_api: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{live_api}/schema/openapi.json", timeout=5).json()
    return document


def test_the_served_document_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    """openapi-spec-validator accepts the document the API serves, and it is the contract's."""
    validate_openapi(served)
    assert served["openapi"] == "3.1.0"
    assert served == openapi_document()


def test_the_document_in_the_repository_is_the_running_apis() -> None:
    """docs/openapi.json is what the code serves (regenerate it with `acme openapi`)."""
    committed = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    assert committed == openapi_document()


def test_every_answer_of_both_order_operations_is_documented(served: dict[str, Any]) -> None:
    """201 typed with its headers and link, every error as a problem, the Idempotency-Key,
    the API key each operation needs (and none for the probes)."""
    create = served["paths"]["/orders"]["post"]
    assert set(create["responses"]) == {
        "201", "400", "401", "403", "409", "413", "415", "422", "429", "503"
    }  # fmt: skip
    created = create["responses"]["201"]
    assert set(created["headers"]) == {
        "Location",
        "Idempotent-Replayed",
        "X-Trace-Id",
        "RateLimit-Policy",
        "RateLimit",
    }
    assert created["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderOut"
    }
    assert created["links"]["GetOrder"]["operationId"] == "readOrder"
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderIn"
    }
    assert [p["name"] for p in create["parameters"]] == ["Idempotency-Key"]
    read = served["paths"]["/orders/{order_id}"]["get"]
    assert set(read["responses"]) == {"200", "401", "403", "404", "429", "503"}
    for operation in (create, read):
        for code, answer in operation["responses"].items():
            if code[0] in "45":
                assert set(answer["content"]) == {"application/problem+json"}, code
    assert "Retry-After" in create["responses"]["503"]["headers"]
    assert served["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert create["security"] == [{"apiKey": ["orders:write"]}]
    assert read["security"] == [{"apiKey": ["orders:read"]}]
    for operation in (create, read):
        for code in ("401", "403"):
            assert "WWW-Authenticate" in operation["responses"][code]["headers"]
    for path in ("/health/live", "/health/ready"):
        assert served["paths"][path]["get"]["security"] == []
    for operation in (create, read):
        assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= set(
            operation["responses"]["429"]["headers"]
        )


def test_every_example_validates_against_its_own_schema(served: dict[str, Any]) -> None:
    """The request example, the 201 and 422 examples: each is valid by its schema."""
    defs = _rewrite_refs(served["components"]["schemas"])
    checked = 0
    for path_item in served["paths"].values():
        for operation in path_item.values():
            bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
            for body in bodies:
                for media in body.get("content", {}).values():
                    examples = [e["value"] for e in media.get("examples", {}).values()]
                    examples += [media["example"]] if "example" in media else []
                    schema = {**_rewrite_refs(media["schema"]), "$defs": defs}
                    for example in examples:
                        Draft202012Validator(schema).validate(example)
                        checked += 1
    assert checked >= 3


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(valid_orders, invalid_bodies, json_values))
def test_the_validator_accepts_exactly_what_the_schema_accepts(document: Any) -> None:
    """Schema-valid orders are accepted, and whatever the schema refuses is refused."""
    verdict = parse_order(document)
    assert ORDER_VALIDATOR.is_valid(document) == isinstance(verdict, OrderDraft), verdict


def test_schemathesis_with_all_checks_finds_nothing(live_api: str, live_key: str) -> None:
    """Orders generated from the served schema are accepted, data it refuses is refused, and
    every other check schemathesis has (the stateful phase included, and `ignored_auth`: each
    operation refuses a request without the key or with a wrong one) passes against the API."""
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{live_api}/schema/openapi.json",
            "--checks",
            "all",
            "--mode",
            "all",
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            "--header",
            f"Authorization: Bearer {live_key}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout


@pytest.fixture
def generated_client(served: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    """A client package generated by openapi-python-client from the served document (into
    this test's folder: never committed)."""
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(served))
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\n")
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--config",
            str(config),
            "--output-path",
            str(tmp_path / "acme_orders_client"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Endpoint will not be generated" not in result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path / "acme_orders_client"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("acme_orders_client")]:
            del sys.modules[name]


async def test_a_generated_client_places_an_order_and_reads_its_notification(
    live_api: str, live_key: str, generated_client: Path
) -> None:
    """The typed client from the document: create_order takes an OrderIn, read_order gives
    back an OrderOut with the notification's status; the key goes in as the client's token."""
    from acme_orders_client import AuthenticatedClient  # type: ignore[import-not-found]
    from acme_orders_client.api.orders import (  # type: ignore[import-not-found]
        create_order,
        read_order,
    )
    from acme_orders_client.models import (  # type: ignore[import-not-found]
        CustomerIn,
        ItemIn,
        OrderIn,
        OrderInCurrency,
        OrderOut,
    )

    order = OrderIn(
        customer=CustomerIn(name="Ana Souza", email="ana@example.com"),
        items=[ItemIn(sku="CANECA-01", name="Caneca", quantity=2, unit_price="19.90")],
        currency=OrderInCurrency.BRL,
    )
    async with AuthenticatedClient(base_url=live_api, token=live_key) as client:
        created = await create_order.asyncio_detailed(
            client=client, body=order, idempotency_key="generated-1"
        )
        assert created.status_code == 201
        placed = created.parsed
        assert isinstance(placed, OrderOut) and placed.total == "39.80"
        again = await read_order.asyncio(client=client, order_id=placed.id)
    assert isinstance(again, OrderOut)
    assert again.notification.status.value in ("pending", "published", "sent")
    assert again.id == placed.id
