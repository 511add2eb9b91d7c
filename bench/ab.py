"""A/B of the system's code in one run: a scenario on two commits (or two settings), arms
alternated (A B A B ...), medians and spread of each headline figure and their ratio.

Both arms run THIS tree's benchmark harness (bench/run.py, the load generator, the CPU
accounting); only the system under test differs: each arm imports `src/` from a git worktree
of its commit (`--head`, default HEAD, and `--base`; PYTHONPATH first, so the services it
starts run that code), so editing the tree during a run changes neither arm. That keeps the
measuring identical, so a difference is the code's.

    .tox/py311/bin/python bench/ab.py intake-1500 --base HEAD~1 --rounds 3
    .tox/py311/bin/python bench/ab.py cpu-200 --base 9253547 --rounds 3
    .tox/py311/bin/python bench/ab.py intake-1500 --env-a ACME_BENCH_API_RATE_PER_S=100000
    .tox/py311/bin/python bench/ab.py drain --env-a ACME_STREAM_SHARDS=1 \
        --env-b ACME_STREAM_SHARDS=8 --rounds 3 -- --events 20000

`drain` is bench/notifier_throughput.py (one replica emptying a pre-loaded backlog); every
other scenario is one of bench/run.py's.

Without `--base` both arms run the same commit, and `--env-a` / `--env-b` (KEY=VALUE,
repeatable) set what differs between them: a setting's A/B.

"system" figures sum the project's processes with PostgreSQL and Redis; the load generator and
the SMTP sink (stand-ins for clients and the provider) are left out, as issue 16 counts them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: make `bench.*` importable, as the other benchmark scripts do.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.cpu import OUTSIDE_THE_SYSTEM

ROOT: Final = Path(__file__).resolve().parents[1]
#: The scenario that is bench/notifier_throughput.py rather than one of bench/run.py's.
DRAIN: Final = "drain"


def _worktree(base: str, folder: Path, name: str) -> Path:
    tree = folder / name
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), base],
        check=True,
        capture_output=True,
    )
    return tree


def _run_arm(
    scenario: str, src: Path, out: Path, extra: list[str], arm_env: dict[str, str]
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **arm_env, "PYTHONPATH": f"{src}:{ROOT}"}
    if scenario == DRAIN:
        argv = [sys.executable, str(ROOT / "bench" / "notifier_throughput.py"), "--out", str(out)]
        pattern = "notifier-throughput-*-2*.json"
    else:
        argv = [sys.executable, str(ROOT / "bench" / "run.py"), scenario, "--no-plot",
                "--out", str(out), "--quiet-timeout-s", "60"]  # fmt: skip
        pattern = f"{scenario}-2*.json"
    subprocess.run([*argv, *extra], check=True, env=env)
    [result] = sorted(out.glob(pattern))[-1:]
    report: dict[str, Any] = json.loads(result.read_text())
    result.rename(result.with_suffix(".done.json"))
    return report


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The headline figures of a run, with the system's CPU per order (or per e-mail, for the
    drain) added."""
    headline = report.get("headline") or report.get("figures", {})
    out = {k: float(v) for k, v in headline.items() if _number(v)}
    rows = report.get("cpu", {}).get("by_process", {})
    if "figures" in report:
        for name, row in rows.items():
            out[f"cpu_ms_per_email_{name}"] = float(row["cpu_ms_per_email"])
        return out
    if rows:
        system = sum(
            row["cpu_ms_per_order"] for name, row in rows.items() if name not in OUTSIDE_THE_SYSTEM
        )
        out["cpu_ms_per_order_system"] = round(system, 4)
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def summary(arms: dict[str, list[dict[str, float]]]) -> list[str]:
    """Median [min-max] per figure and arm, and the ratio of the medians (A/B)."""
    keys = sorted({k for runs in arms.values() for run in runs for k in run})
    lines = [f"{'figure':<34}{'A':>30}{'B':>30}{'A/B':>8}"]
    for key in keys:
        cells, medians = [], []
        for runs in arms.values():
            values = [run[key] for run in runs if key in run]
            if not values:
                cells.append("-")
                medians.append(float("nan"))
                continue
            median = statistics.median(values)
            medians.append(median)
            cells.append(f"{median:.3f} [{min(values):.3f}-{max(values):.3f}]")
        ratio = medians[0] / medians[1] if medians[1] else float("nan")
        lines.append(f"{key:<34}{cells[0]:>30}{cells[1]:>30}{ratio:>8.2f}")
    return lines


def _pairs(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"not KEY=VALUE: {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--head", default="HEAD", help="the commit of arm A (default: HEAD)")
    parser.add_argument("--base", help="the commit of arm B (default: arm A's)")
    parser.add_argument("--env-a", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ab")
    args, extra = parser.parse_known_args(argv)
    extra = [word for word in extra if word != "--"]  # `-- --events 20000`: the scenario's own
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be 1-10")
    envs = {"A": _pairs(parser, args.env_a), "B": _pairs(parser, args.env_b)}
    arms: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="acme-ab-") as folder:
        head = _worktree(args.head, Path(folder), "head")
        base = _worktree(args.base, Path(folder), "base") if args.base else head
        try:
            for round_no in range(args.rounds):
                for arm, src in (("A", head / "src"), ("B", base / "src")):
                    print(f"== round {round_no + 1}/{args.rounds}, arm {arm} ==", flush=True)
                    report = _run_arm(args.scenario, src, args.out / arm, extra, envs[arm])
                    arms[arm].append(figures(report))
        finally:
            for tree in {head, base}:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
    lines = [
        f"A/B {args.scenario}: A = {args.head} {envs['A'] or ''}, B = {args.base or args.head} "
        f"{envs['B'] or ''}; {args.rounds} rounds, A B A B",
        *summary(arms),
    ]
    print("\n".join(lines))
    stamp = Path(args.out / f"{args.scenario}-ab.json")
    stamp.write_text(json.dumps({"base": args.base, "arms": arms, "table": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
