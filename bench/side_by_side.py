"""Our system next to the conventional stack (issue 16), in one run, with one load generator.

    .tox/py311/bin/python bench/side_by_side.py [--rounds 3] [--duration-s 20] [--smoke]

The peer is bench/peer/: FastAPI validating the same order body, an asyncpg INSERT into one
table, Celery `.delay()` on Redis, a prefork worker of concurrency 2 rendering the same e-mail
as ours (text and HTML, every item) with `EmailMessage` and sending it with smtplib; no
outbox. It runs from its own venv, bench/peer/.venv, made on
first use (bench/peer_system.py). Both arms get their own fresh embedded PostgreSQL (durable)
and Redis (AOF everysec) of the same build, Debian's redis 7.0 by default (`--redis debian`,
installed with apt if missing, else the embedded one for both), and the same recording SMTP
sink (bench/sink_recorder.py). Two benchmarks, each run A B A B (ours, then the peer) for
`--rounds` rounds, every arm on a fresh system:

  post-200  `--rate`/s for `--duration-s` after a `--warmup-s` warm-up, open loop
            (bench/loadgen.py), the e-mail side running: ours with `--notifiers` notifiers,
            the peer with its worker. Per arm: POST p50/p99/max, not-2xx, the e-mails delivered
            when the load ends and after at most `--mail-wait-s` more, the backlog when the
            load ends (ours: the notifier group's lag + pending; peer: LLEN celery), and each
            process's CPU-ms per order from the start of the load to the last e-mail.
  drain     `--drain-emails` e-mails queued with nothing consuming, then two workers start:
            ours preloads the events stream (as bench/notifier_throughput.py does) and starts
            2 notifiers; the peer queues Celery tasks and starts its worker (concurrency 2).
            E-mails/s from the sink's received timestamps, first to last. The sink is
            bench/lean_sink.py by default (`--drain-sink aiosmtpd` for the other): a real
            provider costs the sender none of its CPU, aiosmtpd on this box a third of it.

Prints medians with min-max spreads per arm, the ratios and the issue's targets; writes
``bench/results/side-by-side-<timestamp>.json`` (git-ignored). `--smoke`: one round, 3 s of
load, 300 drain e-mails, no wait for a quiet machine (a check that it works, not figures).

This module is the command line; the arms are in bench/side_by_side_arms.py, the table and
the targets in bench/side_by_side_report.py, the peer's venv and processes in
bench/peer_system.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: make `bench.*` (and tests.debian) importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, Final

from tests.debian import PackageUnavailableError, ensure_installed

from acme_cli.embedded import postgres_bin_dir, redis_server_binary
from bench.loadgen import DEFAULT_CONNECTIONS, install_uvloop
from bench.monitor import loadavg, machine, wait_until_quiet
from bench.peer_system import ensure_venv, venv_facts
from bench.side_by_side_arms import Config, ours_drain, ours_post, peer_drain, peer_post
from bench.side_by_side_report import format_report, summarise, targets
from bench.stack import RESULTS_DIR, git_revision, log_tail, raise_interrupt

#: Debian's redis-tools ships the server as this multi-call binary (see tests/tls.py).
_DEBIAN_REDIS: Final = Path("/usr/bin/redis-check-rdb")
_MAX_ROUNDS: Final = 10


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


def _redis_server(kind: str, folder: Path) -> tuple[Path, str]:
    """The redis-server both arms run, and where it comes from."""
    if kind == "debian":
        try:
            ensure_installed(_DEBIAN_REDIS.exists, ["redis-tools"])
        except PackageUnavailableError as exc:
            print(f"Debian's Redis unavailable ({exc}); the embedded one for both arms",
                  flush=True)  # fmt: skip
        else:
            folder.mkdir(parents=True, exist_ok=True)
            # Run under the name redis-server, the multi-call binary is the server.
            link = folder / "redis-server"
            link.unlink(missing_ok=True)
            link.symlink_to(_DEBIAN_REDIS)
            return link, "Debian redis-tools"
    return redis_server_binary(), "embedded"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Our system vs the conventional FastAPI + Celery stack, A B A B."
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per arm (3; smoke 1)")
    parser.add_argument("--rate", type=float, default=200.0, help="post: orders per second")
    parser.add_argument("--duration-s", type=float, default=None, help="post: load (20; smoke 3)")
    parser.add_argument("--warmup-s", type=float, default=None, help="post: warm-up (3; smoke 1)")
    parser.add_argument("--mail-wait-s", type=float, default=60.0,
                        help="post: longest wait for the e-mails after the load")  # fmt: skip
    parser.add_argument("--drain-emails", type=int, default=None, help="drain: 10000; smoke 300")
    parser.add_argument("--drain-timeout-s", type=float, default=180.0)
    parser.add_argument("--notifiers", type=int, default=2, help="our notifier replicas")
    parser.add_argument("--peer-concurrency", type=int, default=2, help="celery prefork size")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--only", choices=("post", "drain"), help="run one benchmark only")
    parser.add_argument("--redis", choices=("debian", "embedded"), default="debian")
    parser.add_argument("--drain-sink", choices=("lean", "aiosmtpd"), default="lean",
                        help="drain: the SMTP stand-in (lean: bench/lean_sink.py)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="1 round, 3 s, 300 e-mails")
    parser.add_argument("--quiet-timeout-s", type=float, default=None,
                        help="longest wait for a quiet machine first (600; smoke 0)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-data", action="store_true")
    return parser


def _config(args: argparse.Namespace) -> Config:
    smoke = args.smoke

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if smoke else full)

    return Config(
        rounds=pick(args.rounds, 3, 1),
        rate_per_s=args.rate,
        duration_s=pick(args.duration_s, 20.0, 3.0),
        warmup_s=pick(args.warmup_s, 3.0, 1.0),
        mail_wait_s=args.mail_wait_s,
        drain_emails=pick(args.drain_emails, 10_000, 300),
        drain_timeout_s=args.drain_timeout_s,
        notifiers=args.notifiers,
        peer_concurrency=args.peer_concurrency,
        connections=args.connections,
        keep_data=args.keep_data,
        drain_sink=args.drain_sink,
    )


def _valid(cfg: Config, quiet_timeout_s: float) -> bool:
    return (
        1 <= cfg.rounds <= _MAX_ROUNDS
        and 1 <= cfg.rate_per_s <= 2_000
        and 1 <= cfg.duration_s <= 600
        and 0 <= cfg.warmup_s <= 60
        and 1 <= cfg.mail_wait_s <= 600
        and 1 <= cfg.drain_emails <= 200_000
        and 10 <= cfg.drain_timeout_s <= 1_800
        and 1 <= cfg.notifiers <= 8
        and 1 <= cfg.peer_concurrency <= 8
        and 0 <= quiet_timeout_s <= 3_600
    )


def _arms(kinds: Sequence[str], cfg: Config, redis_binary: Path, python: Path
          ) -> list[tuple[str, str, Callable[[Path], dict[str, Any]]]]:  # fmt: skip
    """Per round, in this order: A B of each benchmark."""
    arms: list[tuple[str, str, Callable[[Path], dict[str, Any]]]] = []
    if "post" in kinds:
        arms += [
            ("post", "ours", lambda root: ours_post(root, cfg, redis_binary)),
            ("post", "peer", lambda root: peer_post(root, cfg, redis_binary, python)),
        ]
    if "drain" in kinds:
        arms += [
            ("drain", "ours", lambda root: ours_drain(root, cfg, redis_binary)),
            ("drain", "peer", lambda root: peer_drain(root, cfg, redis_binary, python)),
        ]
    return arms


def _interrupted(exc: BaseException) -> bool:
    """Did `exc` happen while Ctrl-C cancelled the arm's event loop? (Clean-up code that
    fails while cancelled replaces the KeyboardInterrupt asyncio.run would raise.)"""
    seen: set[int] = set()
    current: BaseException | None = exc
    # Bounded by the chain's length: each exception is visited once.
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt | asyncio.CancelledError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _run_rounds(
    cfg: Config,
    arms: list[tuple[str, str, Callable[[Path], dict[str, Any]]]],
    run_dir: Path,
    rounds: dict[str, dict[str, list[dict[str, Any]]]],
    failures: list[dict[str, Any]],
) -> None:
    """Every arm of every round; a failed arm is recorded (with its logs' tails) and skipped."""
    for index in range(1, cfg.rounds + 1):
        for kind, arm, run in arms:
            root = run_dir / f"round{index}-{kind}-{arm}"
            print(f"--- round {index}/{cfg.rounds}: {kind} {arm} ...", flush=True)
            try:
                result = run(root)
            except Exception as exc:  # an interrupt goes on up; anything else is recorded
                if _interrupted(exc):
                    raise KeyboardInterrupt from exc
                failures.append({"round": index, "arm": f"{kind} {arm}", "error": repr(exc)})
                print(f"{kind} {arm} failed: {exc!r}", file=sys.stderr)
                for log in sorted(root.rglob("logs/*.log")):
                    print(f"--- {log}\n{log_tail(log, 8)}", file=sys.stderr)
                continue
            rounds[kind][arm].append({"round": index, **result})
            head = result["headline"]
            shown = ("post_p50_ms", "post_p99_ms", "not_2xx", "emails_at_end_of_load",
                     "emails_after_wait", "emails_per_s", "missing")  # fmt: skip
            print("    " + ", ".join(f"{k} {head[k]}" for k in shown if k in head), flush=True)


def _servers(redis_binary: Path, redis_kind: str) -> dict[str, str]:
    return {
        "redis": _version([str(redis_binary), "--version"]),
        "redis_kind": redis_kind,
        "postgres": _version([str(postgres_bin_dir() / "postgres"), "--version"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = _config(args)
    quiet_timeout_s = args.quiet_timeout_s
    if quiet_timeout_s is None:
        quiet_timeout_s = 0.0 if args.smoke else 600.0
    if not _valid(cfg, quiet_timeout_s):
        print(f"side_by_side: --rounds 1-{_MAX_ROUNDS}, --rate 1-2000, --duration-s 1-600, "
              "--warmup-s 0-60, --mail-wait-s 1-600, --drain-emails 1-200000, "
              "--drain-timeout-s 10-1800, --notifiers/--peer-concurrency 1-8, "
              "--quiet-timeout-s 0-3600", file=sys.stderr)  # fmt: skip
        return 2
    install_uvloop()
    signal.signal(signal.SIGTERM, raise_interrupt)
    report: dict[str, Any] = {
        "benchmark": "side-by-side",
        "command": shlex.join(sys.orig_argv),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_revision(),
        "config": asdict(cfg),
    }
    run_dir = Path(tempfile.mkdtemp(prefix="acme-side-by-side-"))
    kinds = ("post", "drain") if args.only is None else (args.only,)
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {"ours": [], "peer": []} for kind in kinds
    }
    failures: list[dict[str, Any]] = []
    try:
        try:
            python = ensure_venv()
            report["peer"] = venv_facts(python)
            redis_binary, redis_kind = _redis_server(args.redis, run_dir / "redis-bin")
            report["servers"] = _servers(redis_binary, redis_kind)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            print(f"side_by_side: could not set up: {exc!r}", file=sys.stderr)
            return 1
        report["quiet"] = wait_until_quiet(quiet_timeout_s)
        report["machine"] = machine()
        print(f"side by side in {run_dir}: {cfg.rounds} round(s) per arm, "
              f"{report['servers']['redis']}", flush=True)  # fmt: skip
        _run_rounds(cfg, _arms(kinds, cfg, redis_binary, python), run_dir, rounds, failures)
    except KeyboardInterrupt:
        print("\nside_by_side: interrupted; every system stopped", file=sys.stderr)
        return 130
    report["machine"]["loadavg_after"] = loadavg()
    summary = summarise(rounds)
    report.update(
        run_dir=str(run_dir),
        summary=summary,
        targets=targets(summary),
        failures=failures,
        rounds=rounds,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"side-by-side-{datetime.now().strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(format_report(report))
    print(f"result    {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
