"""The conventional peer (bench/peer/: FastAPI + asyncpg + Celery on Redis) as
bench/side_by_side.py runs it, next to our system and on the same kind of servers.

The peer runs from its own virtual environment, bench/peer/.venv, made here from
bench/peer/requirements.txt on first use (and again when that file changes); none of it is a
dependency of the project. Its processes are children of a `Stack` (bench/stack.py) like ours
are, so the same code knows their pids, reads their CPU and stops them: its own embedded
PostgreSQL (bench/peer/schema.sql applied) and Redis, the recording SMTP sink
(bench/sink_recorder.py), `uvicorn app:app` (one process) and
`celery -A tasks worker --pool prefork --concurrency N`.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from acme_cli.embedded import free_port
from bench.loadgen import http_get_status
from bench.stack import HOST, Child, Stack, log_tail

__all__ = [
    "CELERY_QUEUE",
    "PEER_DIR",
    "enqueue",
    "ensure_venv",
    "queue_length",
    "start_peer_api",
    "start_peer_servers",
    "start_peer_worker",
    "venv_facts",
    "wait_peer_ready",
]

PEER_DIR: Final = Path(__file__).resolve().parent / "peer"
VENV_DIR: Final = PEER_DIR / ".venv"
#: Celery's default queue: a Redis list of that name on the broker.
CELERY_QUEUE: Final = "celery"
_REQUIREMENTS: Final = PEER_DIR / "requirements.txt"
#: The hash of the requirements the venv was made from.
_STAMP: Final = VENV_DIR / ".requirements.sha256"
_PIP_LOG: Final = VENV_DIR / "pip-install.log"
_VENV_TIMEOUT_S: Final = 120.0
_PIP_TIMEOUT_S: Final = 900.0
_FACTS_TIMEOUT_S: Final = 60.0
_READY_TIMEOUT_S: Final = 60.0
_POLL_S: Final = 0.1


def _python() -> Path:
    return VENV_DIR / "bin" / "python"


def ensure_venv() -> Path:
    """The peer venv's interpreter; the venv is (re)made first if missing or out of date.

    Made with this interpreter's `venv` module (so the peer runs on our Python version) and
    filled by pip from PyPI."""
    wanted = hashlib.sha256(_REQUIREMENTS.read_bytes()).hexdigest()
    python = _python()
    if python.exists() and _STAMP.exists() and _STAMP.read_text().strip() == wanted:
        return python
    print(f"making the peer's venv in {VENV_DIR} (pip install -r {_REQUIREMENTS.name}; "
          f"output in {_PIP_LOG}) ...", flush=True)  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV_DIR)],
                   check=True, timeout=_VENV_TIMEOUT_S)  # fmt: skip
    with _PIP_LOG.open("wb") as log:
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check",
             "-r", str(_REQUIREMENTS)],
            stdout=log, stderr=subprocess.STDOUT, timeout=_PIP_TIMEOUT_S, check=False,
        )  # fmt: skip
    if pip.returncode != 0:
        raise RuntimeError(f"pip install failed ({pip.returncode}):\n{log_tail(_PIP_LOG)}")
    _STAMP.write_text(wanted + "\n")
    return python


def venv_facts(python: Path) -> dict[str, Any]:
    """The peer's Python version and installed packages, for the report."""
    version = subprocess.run([str(python), "--version"], capture_output=True, text=True,
                             timeout=_FACTS_TIMEOUT_S, check=True).stdout.strip()  # fmt: skip
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=_FACTS_TIMEOUT_S, check=True,
    ).stdout.split()  # fmt: skip
    return {"python": version, "packages": freeze}


async def _apply_schema(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute((PEER_DIR / "schema.sql").read_text())
    finally:
        await connection.close()


def start_peer_servers(stack: Stack, *, postgres: bool) -> None:
    """The peer's own PostgreSQL (with its one table) and Redis, on the stack's folder.

    Call from the main thread, outside an event loop (like Stack.start_servers)."""
    if postgres:
        stack.database_url = stack.postgres.start()
        asyncio.run(_apply_schema(stack.database_url))
    stack.redis_url = stack.redis.start()
    stack.logs_dir.mkdir(parents=True, exist_ok=True)


def _peer_env(stack: Stack, ready_file: Path | None = None) -> dict[str, str]:
    env = {
        "PEER_DATABASE_URL": stack.database_url,
        "PEER_REDIS_URL": stack.redis_url,
        "PEER_SMTP_HOST": HOST,
        "PEER_SMTP_PORT": str(stack.sink_port),
        # The peer's modules, and nothing of ours, come first on its path.
        "PYTHONPATH": str(PEER_DIR),
    }
    if ready_file is not None:
        env["PEER_READY_FILE"] = str(ready_file)
    return env


def start_peer_api(stack: Stack, python: Path) -> Child:
    """uvicorn serving bench/peer/app.py, one process (uvloop and httptools: [standard])."""
    stack.http_port = free_port()
    argv = [str(python), "-m", "uvicorn", "app:app", "--app-dir", str(PEER_DIR),
            "--host", HOST, "--port", str(stack.http_port), "--no-access-log",
            "--log-level", "warning"]  # fmt: skip
    return stack.spawn("peer-api", argv, _peer_env(stack))


def start_peer_worker(stack: Stack, python: Path, concurrency: int, ready_file: Path) -> Child:
    """A Celery prefork worker of `concurrency` processes; it touches `ready_file` once it
    consumes. Gossip, mingle and heartbeat are off: with one worker they are only overhead."""
    argv = [str(python), "-m", "celery", "--workdir", str(PEER_DIR), "-A", "tasks", "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--hostname", "peer@bench", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]  # fmt: skip
    return stack.spawn("peer-worker", argv, _peer_env(stack, ready_file))


async def wait_peer_ready(
    stack: Stack, received: Path, *, api: bool, worker_ready_file: Path | None
) -> float:
    """Wait for the sink, then the API's /health (if started), then the worker (if started)."""
    start = time.monotonic()
    await stack.wait_file(received, _READY_TIMEOUT_S)
    if api:
        while await http_get_status(HOST, stack.http_port, "/health") != 200:
            stack.raise_if_dead("during start-up")
            if time.monotonic() - start > _READY_TIMEOUT_S:
                raise RuntimeError(f"the peer's /health not 200 after {_READY_TIMEOUT_S:g} s")
            await asyncio.sleep(_POLL_S)
    if worker_ready_file is not None:
        await stack.wait_file(worker_ready_file, _READY_TIMEOUT_S)
    return time.monotonic() - start


def enqueue(stack: Stack, python: Path, count: int, timeout_s: float) -> int:
    """Queue `count` confirmation tasks (bench/peer/enqueue.py); the queue's length after."""
    result = subprocess.run(
        [str(python), str(PEER_DIR / "enqueue.py"), str(count)],
        env=stack.env(_peer_env(stack)), capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"enqueue failed ({result.returncode}): {result.stderr[-2000:]}")
    return int(result.stdout.split()[-1])


async def queue_length(redis: Redis) -> int:
    """Tasks waiting in Celery's queue (those a worker prefetched are not counted)."""
    return int(await redis.llen(CELERY_QUEUE))
