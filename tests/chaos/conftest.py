"""Fixtures of the chaos scenarios: a fresh system per test, always stopped afterwards.

Systems live in their own `mkdtemp` folder rather than pytest's tmp_path: every new pytest
session resets /tmp/pytest-of-<user> to 0700, which cuts the unprivileged PostgreSQL user off
from its data directory when sessions overlap. The folder is deleted after a passing (or
xfailing) test and kept (its path printed) after a failing one, for the logs;
ACME_CHAOS_KEEP=1 keeps it always.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import ChaosSystem, Scale, chaos_scale

StartSystem = Callable[..., Awaitable[ChaosSystem]]


@pytest.fixture
def scale() -> Scale:
    """The size of this run: ACME_CHAOS_SCALE=ci (default) or full."""
    return chaos_scale()


@pytest.fixture
def chaos_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A private folder for this test's systems; removed unless the test failed."""
    root = Path(tempfile.mkdtemp(prefix="acme-chaos-"))
    yield root
    report = getattr(request.node, "rep_call", None)
    # An expected failure (xfail) counts as passing here: its folder would only pile up.
    if report is not None and not report.failed and not os.environ.get("ACME_CHAOS_KEEP"):
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\nchaos: data and logs kept in {root}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember the call phase's report on the item, for chaos_root's clean-up decision.
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture
async def start_system(chaos_root: Path) -> AsyncIterator[StartSystem]:
    """Starts a `ChaosSystem` (kwargs as its fields); stops every one after the test."""
    systems: list[ChaosSystem] = []

    async def start(**kwargs: Any) -> ChaosSystem:
        system = ChaosSystem(chaos_root / f"system-{len(systems) + 1}", **kwargs)
        systems.append(system)
        await system.start()
        return system

    yield start
    for system in systems:
        await system.stop()
