"""Benchmark of the API's order decoding: the contract's Structs against the previous hand walk.

Both arms turn the same request bodies (a good 3-line order, and a bad one with 6 errors) into a
draft or the error list, as `POST /orders` does: the contract's `decode_order(raw)` (one msgspec
decode; the field walk only on failure), and the previous `msgspec.json.decode` + hand-walked
`parse_order` of `src/acme_orders/domain.py` at `--baseline` (read from git; it needs the
`email-validator` package it used, which the project no longer depends on). Arms alternate
(A B A B ...) within one run, CPU time per body (`time.process_time`); the medians and the
spread of the rounds are printed.

Run: `.tox/py311/bin/python bench/bench_contract.py [--baseline 756a6d1] [--rounds 9] [--bodies N]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from acme_orders.contract import decode_order

GOOD = json.dumps(
    {
        "customer": {"name": "Ana Souza", "email": "ana.souza@example.com.br", "locale": "pt-BR"},
        "items": [
            {"sku": "CAM-01", "name": "Camiseta AcME", "quantity": 2, "unit_price": "19.90"},
            {"sku": "CAN-02", "name": "Caneca térmica", "quantity": 1, "unit_price": "49.00"},
            {"sku": "ADS-03", "name": "Adesivos (pacote)", "quantity": 3, "unit_price": "5.50"},
        ],
        "currency": "BRL",
    }
).encode()
BAD = json.dumps(
    {
        "customer": {"name": "", "email": "not-an-email", "locale": "fr-FR"},
        "items": [{"sku": "A", "name": "a", "quantity": 0, "unit_price": 19.9}],
        "currency": "REAIS",
    }
).encode()


def _baseline(revision: str) -> Callable[[bytes], Any]:
    """The previous decode path, `domain.parse_order` as it was at `revision`."""
    source = subprocess.run(
        ["git", "show", f"{revision}:src/acme_orders/domain.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="acme-bench-contract-"))
    path = folder / "baseline_domain.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_domain", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_domain"] = module
    spec.loader.exec_module(module)
    parse: Callable[[Any], Any] = module.parse_order
    return lambda raw: parse(msgspec.json.decode(raw))


def _us_per_body(decode: Callable[[bytes], Any], body: bytes, bodies: int) -> float:
    started = time.process_time()
    for _ in range(bodies):
        decode(body)
    return (time.process_time() - started) / bodies * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--baseline", default="756a6d1", help="git revision of the old walk")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--bodies", type=int, default=5_000)
    args = parser.parse_args(argv)
    arms: dict[str, Callable[[bytes], Any]] = {
        "before": _baseline(args.baseline),
        "contract": decode_order,
    }
    results: dict[tuple[str, str], list[float]] = {}
    for _round in range(args.rounds):
        for name, decode in arms.items():  # alternating: before, contract, before, ...
            for kind, body in (("good", GOOD), ("bad", BAD)):
                decode(body)  # warm
                results.setdefault((name, kind), []).append(_us_per_body(decode, body, args.bodies))
    print(f"CPU µs per body, median (min-max) of {args.rounds} alternating rounds")
    print(f"{'body':6} {'before (hand walk)':>24} {'contract (Structs)':>24} {'ratio':>7}")
    for kind in ("good", "bad"):
        before, after = results[("before", kind)], results[("contract", kind)]

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"

        ratio = statistics.median(after) / statistics.median(before)
        print(f"{kind:6} {cell(before):>24} {cell(after):>24} {ratio:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
