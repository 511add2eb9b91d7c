"""Renders the chaos results file (one JSON line per scenario run) as Markdown tables.

For docs/reliability.md: the latest run of each scenario, one table per scenario, with the
command that reproduces it. Usage:

    .tox/py311/bin/python -m tests.chaos.report [bench/results/chaos.jsonl]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from tests.chaos.verdict import results_path

#: Where each scenario lives, for the command that reproduces it.
TESTS: Final = {
    "kill-notifiers-relay": "test_kill.py -k notifiers",
    "kill-api": "test_kill.py -k api",
    "smtp-outage": "test_smtp.py -k outage",
    "smtp-flapping": "test_smtp.py -k flapping",
    "smtp-slow-2s": "test_smtp.py -k slow",
    "redis-crash-aof": "test_redis.py -k aof",
    "redis-restart-data-lost": "test_redis.py -k healed",
    "receipts-after-redis-data-loss": "test_redis.py -k receipts",
    "postgres-crash": "test_postgres.py -k crash_mid",
    "postgres-outage-15s": "test_postgres.py -k longer",
    "poison-and-hostile-input": "test_hostile.py -k flow",
    "graceful-rollout": "test_rollout.py",
}


def latest(lines: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The last run of each scenario (at each scale), keyed "scenario (scale)"."""
    runs: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            run = json.loads(line)
            runs[f"{run['scenario']} ({run['scale']})"] = run
    return runs


def table(run: dict[str, Any]) -> list[str]:
    e2e, gap = run["e2e_s"], run.get("ledger_gap_ms", {})
    faults = ", ".join(f"{k} x{v}" for k, v in sorted(run["faults"].items())) or "none"
    test = TESTS.get(run["scenario"], "")
    scale = "" if run["scale"] == "ci" else f"ACME_CHAOS_SCALE={run['scale']} "
    rows = [
        ("faults injected", faults),
        ("orders sent / accepted", f"{run['sent']} / {run['accepted']}"),
        ("rejected (4xx) / failed", f"{run['rejected']} / {run['failed']}"),
        ("e-mails delivered", f"{run['delivered']} ({run['emails']} received)"),
        ("duplicates (explained)", f"{run['duplicates']} ({run['duplicates_explained']})"),
        ("dead (expected; poison)",
         f"{run['dead']} ({run['dead_expected']}; {run['poison_dead']})"),
        ("**lost**", f"**{run['lost']}**"),
        ("e2e p50 / p99 / max", f"{e2e['p50']:.2f} s / {e2e['p99']:.2f} s / {e2e['max']:.2f} s"),
        ("SMTP 250 → ledger row p99 / max",
         f"{gap.get('p99', 0):g} ms / {gap.get('max', 0):g} ms"),
        ("order status wrong / outbox left",
         f"{run['status_mismatches']} / {run['outbox_left']}"),
    ]  # fmt: skip
    rows += [(str(k), f"`{json.dumps(v, default=str)[:300]}`") for k, v in run["extra"].items()]
    return [
        f"#### {run['scenario']} ({run['scale']}, {run['notifiers']} notifiers, {run['at']})",
        "",
        f"`{scale}.tox/py311/bin/pytest tests/chaos/{test} -q -s`" if test else "",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    path = Path(args[0]) if args else results_path()
    for run in latest(path.read_text().splitlines()).values():
        print("\n".join(table(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
