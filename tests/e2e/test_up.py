"""`acme up` from a fresh data folder, as a newcomer runs it: a real subprocess, end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from acme_cli.embedded import free_port
from acme_runtime.channels import EVENTS_STREAM
from tests.integration.test_api import ORDER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]
) -> None:
    """`tests.harness.eventually` for this synchronous test: polls `predicate` until it is true;
    fails after `timeout_s`, describing `what` (a callable: described at that moment)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s}s waiting for {described}")
        time.sleep(0.2)  # the poll interval: each look is an HTTP request or a Redis read


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found |= {child} | _descendants(child)
    return found


def test_acme_up_serves_orders_and_stops_cleanly(tmp_path: Path) -> None:
    """A fresh `acme up` takes an order, publishes it, and leaves no process behind on SIGTERM."""
    port = free_port()
    env = {
        **os.environ,
        "ACME_HTTP_PORT": str(port),
        "ACME_METRICS_PORT": str(free_port()),
        "ACME_LOG_FORMAT": "json",
    }
    for name in ("ACME_DATABASE_URL", "ACME_REDIS_URL", "ACME_SMTP_URL"):
        env.pop(name, None)
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "acme_cli.main", "up", "--data-dir", str(tmp_path / "data")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(ready, 90, lambda: f"the API to be ready; log:\n{log_path.read_text()}")
        response = httpx.post(f"{base}/orders", json=ORDER, timeout=5)
        assert response.status_code == 201, response.text
        order_id = response.json()["id"]

        banner = log_path.read_text()
        match = re.search(r"Redis\s+(redis://\S+)", banner)
        assert match, banner
        client = redis.Redis.from_url(match.group(1))
        try:

            def published() -> bool:
                entries = client.xrange(EVENTS_STREAM)
                return any(f[b"order_id"].decode() == order_id for _i, f in entries)

            _wait_for(published, 10, "the event on the stream")
        finally:
            client.close()
        descendants = _descendants(up.pid)
        assert descendants, "acme up runs its services as child processes"
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, log_path.read_text()
    _wait_for(lambda: not any(_alive(pid) for pid in descendants), 10, "children to exit")
    assert "stopped." in log_path.read_text()
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists(), "data survives in the folder"
