"""py-spy helpers shared by the benchmarks: record a running process, rank its hot spots.

`start_profile` runs `py-spy record --format raw` (folded stacks, one `frame;frame;... count`
line per distinct stack) against a pid for a fixed time; `hot_spots` turns that file into the
top functions by *own* samples (the function was on top of the stack) and by *inclusive* samples
(it was anywhere on the stack), and own samples per package. Two kinds of samples are left out
and counted apart:

- idle threads that py-spy still catches now and then: logging's QueueListener waiting on its
  queue, prometheus_client's HTTP server thread in `select`, any thread blocked in
  `threading`/`queue` waits;
- from the inclusive ranking only, the frames every sample passes through (the entry point, the
  event loop, uvicorn's server loop), which would otherwise top it at ~100 %.

`markdown_table` renders the result for docs/performance.md.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_RATE_HZ",
    "TOP_FUNCTIONS",
    "hot_spots",
    "markdown_table",
    "py_spy",
    "start_profile",
    "stop_profile",
]

DEFAULT_RATE_HZ: Final = 100
TOP_FUNCTIONS: Final = 15
# Frames every sample passes through (the entry point, the event loop): not worth ranking.
_PLUMBING: Final = (
    "(asyncio/",
    "(<frozen runpy>",
    "(acme_cli/main.py",
    "(selectors.py",
    "(uvloop/",
    "(uvicorn/server.py",
    "(uvicorn/_compat.py",
    "(uvicorn/main.py",
)
# A sample with one of these frames belongs to a thread that is waiting, not working.
_IDLE_FRAMES: Final = (
    "_monitor (logging/handlers.py",  # logging.handlers.QueueListener
    "serve_forever (socketserver.py",  # prometheus_client's metrics server thread
    "(queue.py",
    "wait (threading.py",
    "_worker (concurrent/futures/thread.py",
)


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_profile(
    pid: int,
    seconds: float,
    out: Path,
    *,
    rate_hz: int = DEFAULT_RATE_HZ,
    nonblocking: bool = False,
    native: bool = False,
) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record` on `pid` for `seconds` into `out` (raw folded stacks); None when
    py-spy is not installed. Blocking mode (the default) pauses the process for each sample:
    consistent stacks at a cost of a few per cent at 100 Hz; `nonblocking` avoids the pauses
    but yields torn stacks, which blur the inclusive ranking. `native` adds the C frames of
    extension modules (asyncpg's protocol, uvloop, httptools) below the Python ones."""
    binary = py_spy()
    if binary is None:
        print(
            "py-spy not found (.tox/py311/bin/pip install py-spy): not profiling", file=sys.stderr
        )
        return None
    argv = [binary, "record", "--pid", str(pid), "--duration", str(math.ceil(seconds)),
            "--rate", str(rate_hz), "--format", "raw", "--output", str(out)]  # fmt: skip
    if nonblocking:
        argv.append("--nonblocking")
    if native:
        argv.append("--native")
    with out.with_suffix(".py-spy.log").open("ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


def stop_profile(profiler: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait for py-spy to finish writing (it stops by itself after its duration)."""
    try:
        return profiler.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        profiler.kill()
        return profiler.wait()


def _package(frame: str) -> str:
    """ "func (path/to/module.py:12)" -> the top-level package or stdlib module of the frame."""
    location = frame[frame.rfind("(") + 1 :].rstrip(")")
    path = location.rsplit(":", 1)[0]
    if path.startswith("<"):
        return path
    top = path.split("/", 1)[0]
    return top.removesuffix(".py")


def _function(frame: str) -> str:
    """ "func (path/module.py:12)" -> "func (path/module.py)": a function's lines add up."""
    head, _, location = frame.rpartition(" (")
    return f"{head} ({location.removesuffix(')').rsplit(':', 1)[0]})" if head else frame


def hot_spots(folded: Path, top_n: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Top functions by own and by inclusive samples, own samples per package, and the top own
    lines, from py-spy's raw output; percentages are of the working (non-idle) samples."""
    own: dict[str, int] = {}
    own_lines: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    by_package: dict[str, int] = {}
    total = idle = 0
    try:
        text = folded.read_text()
    except OSError as exc:
        return {"error": repr(exc)}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # py-spy's first frames may name the process/thread and carry no "(location)".
        frames = [f for f in stack.split(";") if f.endswith(")") and " (" in f]
        if not frames:
            continue
        if any(marker in frame for frame in frames for marker in _IDLE_FRAMES):
            idle += count
            continue
        total += count
        leaf = frames[-1]
        own_lines[leaf] = own_lines.get(leaf, 0) + count
        own[_function(leaf)] = own.get(_function(leaf), 0) + count
        package = _package(leaf)
        by_package[package] = by_package.get(package, 0) + count
        for function in {_function(f) for f in frames}:
            if not any(marker in function for marker in _PLUMBING):
                inclusive[function] = inclusive.get(function, 0) + count

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:top_n]
        return [(name, round(100 * n / max(1, total), 1)) for name, n in ranked]

    return {
        "samples": total,
        "idle_samples_left_out": idle,
        "own_by_package_pct": top(by_package),
        "top_own_pct": top(own),
        "top_own_lines_pct": top(own_lines),
        "top_inclusive_pct": top(inclusive),
    }


def markdown_table(spots: dict[str, Any], rows: int = TOP_FUNCTIONS) -> str:
    """Own and inclusive rankings side by side, as a Markdown table."""
    own, inclusive = spots["top_own_pct"], spots["top_inclusive_pct"]
    lines = [
        "| # | Own % | Function (own: on top of the stack) | Inclusive % | Function (inclusive) |",
        "|---|---:|---|---:|---|",
    ]
    for index in range(min(rows, max(len(own), len(inclusive)))):
        o_name, o_pct = own[index] if index < len(own) else ("", math.nan)
        i_name, i_pct = inclusive[index] if index < len(inclusive) else ("", math.nan)
        lines.append(
            f"| {index + 1} | {o_pct:.1f} | `{o_name}` | {i_pct:.1f} | `{i_name}` |"
            if o_name and i_name
            else f"| {index + 1} | {o_pct:.1f} | `{o_name}` | | |"
        )
    return "\n".join(lines)
