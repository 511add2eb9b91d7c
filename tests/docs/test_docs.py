"""The documentation holds together: its Mermaid diagrams are well formed, its relative links
and anchors resolve, the ADRs are complete and indexed, and the README's configuration table
lists exactly the ACME_* variables the code reads, with the defaults the settings declare."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Final

import msgspec
import pytest

from acme_cli.admin.settings import AdminSettings
from acme_notify.settings import NotifySettings
from acme_orders.settings import OrdersSettings
from acme_runtime.env import EnvField, settings_fields
from tests.docs.markdown import (
    Block,
    anchors,
    github_slug,
    link_problem,
    links,
    mermaid_problems,
    split_markdown,
)

ROOT: Final = Path(__file__).resolve().parents[2]
DOCS: Final = ROOT / "docs"
README: Final = ROOT / "README.md"
ADR_DIR: Final = DOCS / "adr"
ADR_SECTIONS: Final = ("## Context", "## Decision", "## Alternatives", "## Consequences")
_ACME_VAR = re.compile(r"ACME_[A-Z0-9_]+")
_TABLE_ROW = re.compile(r"^\|\s*`(?P<name>ACME_[A-Z0-9_]+)`\s*\|\s*(?P<default>[^|]*?)\s*\|")
#: Every settings Struct; their fields' Env metadata is what the processes read.
SETTINGS: Final = (OrdersSettings, NotifySettings, AdminSettings)


def _markdown_files() -> list[Path]:
    files = sorted(DOCS.rglob("*.md"))
    return [*files, README] if README.exists() else files


def _mermaid_blocks() -> list[tuple[str, Block]]:
    found: list[tuple[str, Block]] = []
    for path in _markdown_files():
        blocks, _prose = split_markdown(path.read_text(encoding="utf-8"))
        found += [(str(path.relative_to(ROOT)), b) for b in blocks if b.lang == "mermaid"]
    return found


def _acme_variables_read(*folders: Path) -> set[str]:
    """ACME_* names that appear as whole string literals in the Python code of `folders`."""
    names: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and _ACME_VAR.fullmatch(node.value)
                ):
                    names.add(node.value)
    return names


def _declared_settings() -> list[EnvField]:
    """The fields of every settings Struct, as the loader reads them."""
    return [field for cls in SETTINGS for field in settings_fields(cls)]


def _variables_the_code_reads() -> set[str]:
    """The settings' declared variables, and the few `acme up` and `acme migrate` read alone."""
    return {f.env.var for f in _declared_settings()} | _acme_variables_read(ROOT / "src")


def _readme_table() -> dict[str, str]:
    """The configuration table: variable name -> its default cell, as written."""
    if not README.exists():
        pytest.fail("README.md does not exist yet: it must hold the configuration table")
    _blocks, prose = split_markdown(README.read_text(encoding="utf-8"))
    rows = {
        m.group("name"): m.group("default") for _n, line in prose if (m := _TABLE_ROW.match(line))
    }
    if not rows:
        pytest.fail("README.md has no configuration table with rows like | `ACME_NAME` | ...")
    return rows


def _readme_table_variables() -> set[str]:
    return set(_readme_table())


def _default_problem(field: EnvField, cell: str) -> str | None:
    """How the README's default cell disagrees with the declared default, if it does.

    A plain default is one backquoted value equal to it; an optional one is `unset`. Required
    variables and computed defaults are described in words, which are not checked."""
    if field.required or field.env.default_from is not None:
        return None
    if field.default is None:
        return None if cell == "unset" else f"expected `unset`, got {cell!r}"
    if field.default is msgspec.NODEFAULT:  # a default_factory: nothing plain to compare
        return None
    plain = re.fullmatch(r"`([^`]*)`", cell)
    if plain is None:
        return f"expected `{field.default}`, got {cell!r}"
    written = plain.group(1)
    if field.kind is bool:
        same = written.lower() == str(field.default).lower()
    else:
        try:
            same = field.kind(written) == field.default
        except ValueError:
            same = False
    return None if same else f"expected `{field.default}`, got {cell!r}"


# -- Mermaid ---------------------------------------------------------------------------------


def test_the_docs_have_diagrams_to_check() -> None:
    """The architecture document carries its context, sequence and state diagrams."""
    kinds = [
        block.lines[0].split()[0] for path, block in _mermaid_blocks() if "architecture" in path
    ]
    assert kinds.count("sequenceDiagram") >= 4
    assert kinds.count("stateDiagram-v2") >= 1
    assert kinds.count("flowchart") >= 2


@pytest.mark.parametrize(
    ("where", "block"),
    [pytest.param(path, block, id=f"{path}:{block.line}") for path, block in _mermaid_blocks()],
)
def test_every_mermaid_diagram_is_well_formed(where: str, block: Block) -> None:
    """Each mermaid block is closed, has a known type, balanced brackets and known participants."""
    assert block.closed, f"{where}:{block.line}: the fence is never closed"
    assert mermaid_problems(block.lines) == [], f"{where}:{block.line}"


@pytest.mark.parametrize(
    ("diagram", "expected"),
    [
        ("flowhcart LR\n  a --> b", "unknown diagram type"),
        ("flowchart XY\n  a --> b", "unknown direction"),
        ('flowchart LR\n  a["open --> b', "unbalanced double quote"),
        ("flowchart LR\n  a[label --> b", "unclosed '['"),
        ("flowchart LR\n  a(label] --> b", "unbalanced ']'"),
        ("flowchart LR\n  subgraph s\n    a --> b", "unclosed block(s): subgraph"),
        ("flowchart LR\n  a --> b\n  end", "'end' closes nothing"),
        ("stateDiagram-v2\n  state s {\n    a --> b", "unclosed '{'"),
        ("sequenceDiagram\n  participant A\n  participant B\n  A->>C: hi", "'C' is not declared"),
        ("sequenceDiagram\n  participant A\n  Note over A,Z: hi", "'Z' is not declared"),
        ("sequenceDiagram\n  A->>B: hi\n  loop forever\n  A->>B: again", "unclosed block(s): loop"),
        ("sequenceDiagram\n  A->>B: hi\n  else nope", "'else' outside its block"),
        ("sequenceDiagram\n  A->>B: one; two", "ends a Mermaid statement early"),
        ("sequenceDiagram\n  A->>B: issue #42", "ends a Mermaid statement early"),
        ("sequenceDiagram\n  A to B", "not a sequence statement"),
    ],
)
def test_the_mermaid_check_rejects_broken_diagrams(diagram: str, expected: str) -> None:
    """The structural check names each kind of mistake that breaks rendering."""
    problems = mermaid_problems(diagram.splitlines())
    assert any(expected in problem for problem in problems), problems


def test_the_mermaid_check_accepts_implicit_participants_and_nested_blocks() -> None:
    """Undeclared participants are fine when none are declared; alt/else/loop nest and close."""
    diagram = """sequenceDiagram
        autonumber
        A->>B: request (with parentheses, {braces} and "quotes")
        alt ok
            B-->>A: 200
        else failure
            B--xA: lost
            loop retry
                A-)B: again
            end
        end
        Note over A,B: done"""
    assert mermaid_problems(diagram.splitlines()) == []


# -- links and anchors -------------------------------------------------------------------------


def test_github_slugs_match_githubs_rules() -> None:
    """Anchors follow GitHub: lower case, punctuation and symbols dropped, spaces to hyphens."""
    assert github_slug("At 10\u00d7 and 100\u00d7") == "at-10-and-100"  # x is the times sign
    assert github_slug("Retry schedule against the 5-minute SLA") == (
        "retry-schedule-against-the-5-minute-sla"
    )
    assert github_slug("ADR 0014: A fast path + relay") == "adr-0014-a-fast-path--relay"
    assert github_slug("The `outbox` table") == "the-outbox-table"
    assert github_slug("Decisões justificadas") == "decisões-justificadas"


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in _markdown_files()]
)
def test_every_relative_link_resolves(path: Path) -> None:
    """Every relative link points at an existing file, and every #anchor at a heading there."""
    problems = [
        f"line {number}: {problem}"
        for number, target in links(path)
        if (problem := link_problem(path, target, ROOT))
    ]
    assert problems == [], str(path.relative_to(ROOT))


def test_same_file_anchors_are_checked() -> None:
    """A link to a missing heading of the same file is reported; an existing one is not."""
    architecture = DOCS / "architecture.md"
    assert "delivery-guarantee" in anchors(architecture)
    assert link_problem(architecture, "#delivery-guarantee", ROOT) is None
    assert "no heading" in (link_problem(architecture, "#no-such-heading", ROOT) or "")
    assert "no such file" in (link_problem(architecture, "missing.md", ROOT) or "")
    assert link_problem(architecture, "https://example.com/x.md", ROOT) is None


# -- ADRs ------------------------------------------------------------------------------------


def test_every_adr_has_its_sections_and_is_indexed() -> None:
    """Each numbered ADR has a status and the four sections, and the ADR index links it."""
    records = sorted(ADR_DIR.glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert len(records) >= 14
    numbers = [int(record.name[:4]) for record in records]
    assert numbers == list(range(1, len(records) + 1)), "ADR numbers have gaps or repeats"
    index = (ADR_DIR / "README.md").read_text(encoding="utf-8")
    for record in records:
        text = record.read_text(encoding="utf-8")
        assert text.startswith(f"# ADR {record.name[:4]}: "), record.name
        assert "\nStatus: " in text, record.name
        missing = [section for section in ADR_SECTIONS if f"\n{section}\n" not in text]
        assert missing == [], record.name
        assert f"]({record.name})" in index, f"{record.name} is not in adr/README.md"


# -- configuration table -----------------------------------------------------------------------


def test_every_variable_the_code_reads_is_in_the_readme_table() -> None:
    """Each ACME_* literal in src/ has a row in the README's configuration table."""
    undocumented = _variables_the_code_reads() - _readme_table_variables()
    assert undocumented == set(), f"add rows to README.md for: {sorted(undocumented)}"


def test_every_variable_in_the_readme_table_is_read_by_the_code() -> None:
    """Each ACME_* row of the README's table names a variable src/, tests/ or bench/ reads."""
    read = _variables_the_code_reads() | _acme_variables_read(ROOT / "tests", ROOT / "bench")
    stale = _readme_table_variables() - read
    assert stale == set(), f"README.md documents variables nothing reads: {sorted(stale)}"


def test_the_readme_defaults_are_the_declared_defaults() -> None:
    """Each setting's default in the README's table is the one its Struct field declares."""
    table = _readme_table()
    fields = _declared_settings()
    # The admin commands take the URLs the services require as optional: the row is the services'.
    required = {field.env.var for field in fields if field.required}
    wrong = [
        f"{field.env.var}: {problem}"
        for field in fields
        if field.env.var not in required
        and (problem := _default_problem(field, table[field.env.var]))
    ]
    assert wrong == []


def test_the_default_check_catches_a_stale_default() -> None:
    """The default check is not vacuous: a changed number, a word for a plain value are caught."""
    (retention,) = [f for f in settings_fields(NotifySettings) if f.name == "ledger_retention_s"]
    assert _default_problem(retention, "`604800`") is None
    assert _default_problem(retention, "`86400`") == "expected `604800`, got '`86400`'"
    assert _default_problem(retention, "a week") is not None
    (fallback,) = [f for f in settings_fields(NotifySettings) if f.name == "smtp_fallback_url"]
    assert _default_problem(fallback, "unset") is None
    assert _default_problem(fallback, "`smtp://x`") is not None


def test_the_code_scan_finds_the_variables_settings_read() -> None:
    """The literal scan sees the settings' reads, so an empty table cannot pass by accident."""
    read = _acme_variables_read(ROOT / "src")
    assert {"ACME_DATABASE_URL", "ACME_REDIS_URL", "ACME_SMTP_URL"} <= read
    assert {"ACME_REDRIVE_AFTER_S", "ACME_MAX_DELIVERIES", "ACME_DEDUPE_TTL_S"} <= read
    # tests/deploy checks the manifests' variables against the same literals.
    declared = {field.env.var for field in _declared_settings()}
    assert declared <= read, "declare each settings variable as one string literal"
