"""`acme up` from a fresh data folder, as a newcomer runs it: a real subprocess, end to end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def _acme_up(tmp_path: Path, **env_vars: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`acme up` on a fresh data folder with embedded servers, its output in `up.log`; SIGTERM
    at the end (the caller asserts on the exit code: `process.returncode`)."""
    env = {**os.environ, "ACME_LOG_FORMAT": "json", **env_vars}
    for name in ("ACME_DATABASE_URL", "ACME_REDIS_URL", "ACME_SMTP_URL", "ACME_METRICS_HOST"):
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
    try:
        yield up, log_path
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)


def _wait_running(log_path: Path) -> str:
    """Waits for the banner; the output so far."""
    _wait_for(
        lambda: "is running" in log_path.read_text(),
        90,
        lambda: f"the banner; output:\n{log_path.read_text()}",
    )
    return log_path.read_text()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_acme_up_serves_orders_and_stops_cleanly(tmp_path: Path) -> None:
    """A fresh `acme up` refuses an order without a key, takes one with the key its banner
    prints, publishes it, and leaves no process behind on SIGTERM."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _acme_up(tmp_path, ACME_HTTP_PORT=str(port), ACME_METRICS_PORT=str(free_port())) as (
        up,
        log_path,
    ):
        banner = _wait_running(log_path)
        assert httpx.post(f"{base}/orders", json=ORDER, timeout=5).status_code == 401
        key = re.search(r"API key\s+(acme_\S+)", banner)
        assert key, banner
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        response = httpx.post(f"{base}/orders", json=ORDER, headers=headers, timeout=5)
        assert response.status_code == 201, response.text
        order_id = response.json()["id"]

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
    assert up.returncode == 0, log_path.read_text()
    _wait_for(lambda: not any(_alive(pid) for pid in descendants), 10, "children to exit")
    assert "stopped." in log_path.read_text()
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists(), "data survives in the folder"


def test_acme_up_says_it_is_running_only_once_every_process_is_ready(tmp_path: Path) -> None:
    """When the banner appears, the API and every worker's metrics listener already answer
    their readiness check: no request made right after it is refused."""
    port = free_port()
    with _acme_up(tmp_path, ACME_HTTP_PORT=str(port), ACME_METRICS_PORT=str(free_port())) as (
        up,
        log_path,
    ):
        banner = _wait_running(log_path)
        # Asked once each, at once: no retry hides a listener that is not there yet.
        assert _ready(f"http://127.0.0.1:{port}/health/ready"), banner
        relay = re.search(r"(http://\S+)/metrics \(relay\)", banner)
        assert relay, banner
        assert _ready(f"{relay.group(1)}/health/ready"), banner
        notifiers = re.findall(r"notifier-\d+ on port (\d+)", banner)
        assert len(notifiers) == 2, banner
        api_metrics = re.search(r"api on port (\d+)", banner)
        assert api_metrics, banner
        for metrics_port in (*notifiers, api_metrics.group(1)):
            assert _ready(f"http://127.0.0.1:{metrics_port}/health/ready"), banner
        # The API's metrics are on that port, not on the public one.
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 404
    assert up.returncode == 0, log_path.read_text()


def test_acme_up_picks_a_free_metrics_port_when_its_own_is_taken(tmp_path: Path) -> None:
    """Something already listens on the relay's metrics port (node_exporter's 9100, say):
    `acme up` says so, serves the relay's metrics on a free port it names, and the relay runs
    instead of restarting in a loop with `[Errno 98] address already in use`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        # Below the ephemeral range (free_port), as 9100 is: `acme up` gives the notifiers and
        # the API the ports after this one, and a port from the ephemeral range (binding to 0)
        # can meanwhile become the local port of any outgoing connection, which then keeps
        # the API from binding it for as long as it lives (seen once in CI).
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        taken_port = taken.getsockname()[1]
        with _acme_up(
            tmp_path, ACME_HTTP_PORT=str(free_port()), ACME_METRICS_PORT=str(taken_port)
        ) as (up, log_path):
            banner = _wait_running(log_path)
            said = re.search(
                rf"port {taken_port} is in use: relay serves its metrics on port (\d+)", banner
            )
            assert said, banner
            chosen = int(said.group(1))
            assert chosen != taken_port
            assert f"http://127.0.0.1:{chosen}/metrics (relay)" in banner
            assert _ready(f"http://127.0.0.1:{chosen}/health/ready"), banner
            assert "relay exited" not in log_path.read_text()
    assert up.returncode == 0, log_path.read_text()
    relay_log = (tmp_path / "data" / "logs" / "relay.log").read_text()
    assert "Errno 98" not in relay_log, relay_log
