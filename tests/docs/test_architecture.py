"""The boundaries docs/architecture.md promises hold in the code: the two services never import
each other, the shared runtime imports neither, and each service's SQL stays on its own tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Final

import pytest

SRC: Final = Path(__file__).resolve().parents[2] / "src"
PACKAGES: Final = ("acme_orders", "acme_notify", "acme_runtime", "acme_cli")
#: package -> the project packages it must never import.
FORBIDDEN: Final = {
    "acme_orders": {"acme_notify", "acme_cli"},
    "acme_notify": {"acme_orders", "acme_cli"},
    "acme_runtime": {"acme_orders", "acme_notify", "acme_cli"},
}
ORDER_TABLES: Final = ("orders", "order_items", "order_timeline", "outbox", "idempotency_keys")
_ORDER_TABLE_SQL = re.compile(
    rf"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(?:public\.)?(?:{'|'.join(ORDER_TABLES)})\b"
)
_NOTIFY_SCHEMA_SQL = re.compile(r"\bnotify\.[a-z_]+")


def _imports(package: str) -> dict[str, set[str]]:
    """module file -> the top-level project packages it imports (absolute imports)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(SRC))] = names & set(PACKAGES)
    return found


def _sql_texts(package: str) -> list[tuple[str, str]]:
    """(file, text) of every string literal and .sql file of a package."""
    texts: list[tuple[str, str]] = []
    for path in sorted((SRC / package).rglob("*.sql")):
        texts.append((str(path.relative_to(SRC)), path.read_text(encoding="utf-8")))
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append((str(path.relative_to(SRC)), node.value))
    return texts


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_the_layering_allows(package: str) -> None:
    """Neither service imports the other or the CLI; the runtime imports no service."""
    imports = _imports(package)
    assert imports, f"no modules found under src/{package}"
    breaches = {
        module: sorted(names & FORBIDDEN[package])
        for module, names in imports.items()
        if names & FORBIDDEN[package]
    }
    assert breaches == {}


def test_both_services_build_on_the_shared_runtime() -> None:
    """The import scan sees real imports: both services do import acme_runtime."""
    for package in ("acme_orders", "acme_notify"):
        assert any("acme_runtime" in names for names in _imports(package).values()), package


def test_the_notifier_never_touches_the_order_tables() -> None:
    """No SQL in acme_notify names a table of the order service (orders, outbox, ...)."""
    hits = [
        (file, m.group(0))
        for file, text in _sql_texts("acme_notify")
        for m in _ORDER_TABLE_SQL.finditer(text)
    ]
    assert hits == []


def test_the_order_service_never_touches_the_notify_schema() -> None:
    """No SQL in acme_orders names a table of the notifier's `notify` schema."""
    hits = [
        (file, m.group(0))
        for file, text in _sql_texts("acme_orders")
        for m in _NOTIFY_SCHEMA_SQL.finditer(text)
    ]
    assert hits == []


def test_the_sql_scans_would_see_a_breach() -> None:
    """The patterns match the statements they guard against (the checks are not vacuous)."""
    assert _ORDER_TABLE_SQL.search("SELECT status FROM orders WHERE id = $1")
    assert _ORDER_TABLE_SQL.search("DELETE FROM outbox WHERE event_id = $1")
    assert not _ORDER_TABLE_SQL.search("SELECT message_id FROM notify.sent_ledger")
    assert _NOTIFY_SCHEMA_SQL.search("SELECT 1 FROM notify.sent_ledger")
    assert any("notify.sent_ledger" in text for _f, text in _sql_texts("acme_notify"))
