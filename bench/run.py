"""The benchmark suite: one command runs one named scenario and writes a JSON result and a plot.

    .tox/py311/bin/python bench/run.py SCENARIO [--out DIR] [--repeat N]

Every run starts the whole system on a fresh temporary folder as separate processes
(bench/stack.py: embedded durable PostgreSQL, Redis with AOF, `acme api`, `acme relay`,
`--notifiers` `acme notifier` replicas and the recording SMTP sink bench/sink_recorder.py),
offers orders open loop (bench/loadgen.py) and measures from the outside:

- POST latency from each request's *scheduled* time (no coordinated omission);
- end-to-end latency per order from the SMTP side: the sink's `received_at` (when it accepted
  DATA) minus the order's `created_at` from the POST response (same machine, same clock);
- once a second (bench/monitor.py): every process tree's CPU time (psutil), the notifier
  group's lag, pending count and oldest unread age (`acme_notify.probe.measure_stream`), the
  e-mails received so far and the live notifier replicas; every `--rss-every-s`: the resident
  memory of each service process.

Scenarios (`--notifiers` replicas, 2 unless said otherwise):

  smoke            50/s for 3 s with 1 notifier: the CI smoke test (tests/bench/).
  steady-50        50/s for 60 s: the kata's mean rate.
  peak-200         200/s for 60 s: the kata's peak. Targets: POST p99 < 10 ms, e2e p50 < 50 ms,
                   e2e p99 < 500 ms, every e-mail delivered.
  sustain-500      500/s for 300 s: the end-to-end throughput target.
  max              ramps in 15 s steps until POST p99 > 50 ms, errors, or (end to end) e-mails
                   fall behind; first intake alone (API + relay: 200, 400, ... 2000/s), then the
                   whole system (100, 200, 300, ... /s). Reports the last good rate of each.
  outage-recovery  200/s; after 30 s the SMTP sink refuses connections for 180 s (36,000
                   e-mails of backlog), then comes back. Reports the oldest e-mail's e2e time
                   (SLA 300 s), the drain time, and what the circuit breaker did.
  soak             200/s for ACME_BENCH_SOAK_S seconds (600): RSS of every process every 10 s,
                   the maximum and the growth slope per process.
  storage          200/s for 30 s (6,000 orders), every e-mail, then 30 s quiet: Redis keys that
                   are not streams, the longest stream, Redis bytes per order left behind,
                   PostgreSQL bytes per order per table (partitions and indexes) and WAL.
  storage-soak     200/s for ACME_BENCH_STORAGE_SOAK_S seconds (900) with retentions of minutes:
                   Redis memory and the tables with a retention flat over the second half.
  tracing-cost     intake (API + relay) with tracing on (SDK, no exporter, every trace
                   recorded), sampled (parent-based 10 % ratio: OTEL_TRACES_SAMPLER) and off
                   (OTEL_SDK_DISABLED=true), interleaved, `--repeat` rounds: CPU-ms per order at
                   200/s and the throughput at saturation.
  profile-api      intake at saturation (1,000/s offered) with py-spy recording the API.

Before each run the machine must be quiet (1-minute load average < 1.0 and no other `pytest`
or `acme_cli.main` process): the suite waits up to `--quiet-timeout-s` (checking every 30 s),
then runs anyway and labels the result "provisional, machine busy". With `--repeat N` the
scenario runs N times (fresh system each time) and a summary JSON gives the median, min and max
of each headline figure.

Results: ``<out>/<scenario>-<timestamp>.json`` and ``.png`` (default out: bench/results/,
git-ignored); ``<out>/<scenario>-summary-<timestamp>.json`` with `--repeat`.

This module is the command line; the scenarios are in bench/scenarios/, the running system and
its load in bench/system.py, the sampling in bench/monitor.py and bench/cpu.py, the figures in
bench/figures.py, the report and its plot in bench/report.py and bench/plots.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script (`python bench/run.py`): make `bench.*` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import shlex
import signal
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from bench.loadgen import DEFAULT_CONNECTIONS, install_uvloop
from bench.monitor import loadavg, nproc, wait_until_quiet
from bench.report import format_report, medians, save_report
from bench.scenarios import OUTAGE_S, SCENARIOS, RunOptions
from bench.scenarios.constant import constant
from bench.scenarios.outage import outage
from bench.scenarios.profile import intake, profile_api
from bench.scenarios.ramp import max_scenario
from bench.scenarios.storage import SOAK_RETENTION_ENV, storage
from bench.scenarios.tracing import tracing
from bench.stack import RESULTS_DIR, Stack, log_tail, raise_interrupt
from bench.system import stack_run

__all__ = ["SCENARIOS", "RunOptions", "main", "run_scenario", "save_report", "wait_until_quiet"]


def run_scenario(name: str, options: RunOptions, rounds: int = 1) -> dict[str, Any]:
    """Run one scenario once (tracing-cost: `rounds` interleaved rounds) on a fresh system."""
    scenario = SCENARIOS[name]
    notifiers = scenario.notifiers if options.notifiers is None else options.notifiers
    if scenario.kind in ("tracing", "profile", "intake"):
        notifiers = 0
    root = Path(tempfile.mkdtemp(prefix=f"acme-bench-{name}-"))
    print(f"{name}: system in {root} (nproc {nproc()}) ...", flush=True)
    if scenario.kind == "tracing":
        report = tracing(root, scenario, options, rounds)
    elif scenario.kind == "max":
        report = max_scenario(root, scenario, options, notifiers)
    else:
        body: Callable[[Stack], Coroutine[Any, Any, dict[str, Any]]]
        env = SOAK_RETENTION_ENV if name == "storage-soak" else None
        if scenario.kind == "storage":
            body = lambda stack: storage(stack, scenario, options, notifiers)  # noqa: E731
        elif scenario.kind == "outage":
            body = lambda stack: outage(stack, scenario, options, notifiers)  # noqa: E731
        elif scenario.kind == "profile":
            body = lambda stack: profile_api(stack, scenario, options)  # noqa: E731
        elif scenario.kind == "intake":
            body = lambda stack: intake(stack, scenario, options)  # noqa: E731
        else:
            body = lambda stack: constant(stack, scenario, options, notifiers)  # noqa: E731
        report = stack_run(
            root,
            notifiers,
            options,
            sink=scenario.kind not in ("profile", "intake"),
            env=env,
            body=body,
        )
    report["machine"]["loadavg_after"] = loadavg()
    report["data_dir"] = str(root)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run one named benchmark scenario on a fresh system; write JSON and a plot.",
        epilog="; ".join(f"{s.name}: {s.description or s.kind}" for s in SCENARIOS.values()),
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs (tracing-cost: interleaved rounds); a summary gives medians",
    )
    parser.add_argument("--notifiers", type=int, default=None, help="notifier replicas")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--quiet-timeout-s",
        type=float,
        default=600.0,
        help="longest wait for a quiet machine before each run (0: no wait)",
    )
    parser.add_argument("--step-s", type=float, default=15.0, help="max: seconds per step")
    parser.add_argument("--outage-s", type=float, default=OUTAGE_S)
    parser.add_argument("--outage-mode", choices=("refuse", "421"), default="refuse")
    parser.add_argument("--profile-s", type=float, default=20.0, help="profile-api: py-spy s")
    parser.add_argument("--native", action="store_true", help="profile-api: C frames too")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--keep-data", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (
        1 <= args.repeat <= 20
        and 0 <= (args.notifiers or 0) <= 16
        and 5 <= args.step_s <= 120
        and 10 <= args.outage_s <= 600
        and 0 <= args.quiet_timeout_s <= 3_600
        and 5 <= args.profile_s <= 120
    ):
        print(
            "run: --repeat 1-20, --notifiers 0-16, --step-s 5-120, --outage-s 10-600, "
            "--quiet-timeout-s 0-3600, --profile-s 5-120",
            file=sys.stderr,
        )
        return 2
    install_uvloop()
    signal.signal(signal.SIGTERM, raise_interrupt)
    options = RunOptions(
        out_dir=args.out,
        notifiers=args.notifiers,
        plot=not args.no_plot,
        quiet_timeout_s=args.quiet_timeout_s,
        step_s=args.step_s,
        outage_s=args.outage_s,
        outage_mode=args.outage_mode,
        profile_s=args.profile_s,
        native=args.native,
        connections=args.connections,
        keep_data=args.keep_data,
        command=shlex.join(sys.orig_argv),
    )
    tracing_kind = SCENARIOS[args.scenario].kind == "tracing"
    runs = 1 if tracing_kind else args.repeat
    reports, paths = [], []
    try:
        for index in range(runs):
            if not tracing_kind:
                options.quiet = wait_until_quiet(options.quiet_timeout_s)
            if runs > 1:
                print(f"--- run {index + 1} of {runs}", flush=True)
            report = run_scenario(args.scenario, options, rounds=args.repeat)
            path = save_report(report, options.out_dir, options.plot)
            reports.append(report)
            paths.append(path)
            print(format_report(report))
            pictures = [report["plot"]] if "plot" in report else []
            pictures += report.get("plots", {}).values()
            print(f"result    {path}", *(f"plot      {p}" for p in pictures), sep="\n", flush=True)
    except KeyboardInterrupt:
        print("\nrun: interrupted; stopped the system", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report the failure and the logs' tails
        print(f"run: failed: {exc!r}", file=sys.stderr)
        folders = Path(tempfile.gettempdir()).glob(f"acme-bench-{args.scenario}-*")
        newest = max(folders, key=lambda p: p.stat().st_mtime, default=None)
        for log in sorted(newest.rglob("logs/*.log")) if newest is not None else []:
            print(f"--- {log}\n{log_tail(log, 8)}", file=sys.stderr)
        return 1
    if runs > 1:
        summary = {
            "scenario": args.scenario,
            "command": options.command,
            "runs": [str(p) for p in paths],
            "provisional": [r.get("provisional") for r in reports],
            "medians": medians([r["headline"] for r in reports]),
            "targets_met": [[t["met"] for t in r.get("targets", [])] for r in reports],
        }
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        path = options.out_dir / f"{args.scenario}-summary-{stamp}.json"
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        print(f"summary   {path}")
        for key, value in summary["medians"].items():
            print(
                f"  {key:<44} median {value['median']:<10g} (min {value['min']:g}, "
                f"max {value['max']:g}, {value['runs']} runs)"
            )
    failed = any(
        t["met"] is False and "delivered" in t["target"]
        for r in reports
        for t in r.get("targets", [])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
