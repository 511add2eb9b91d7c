"""The benchmark suite keeps working: its smoke scenario through the real system, in seconds.

`bench/run.py smoke` starts embedded PostgreSQL and Redis, the recording SMTP sink, `acme api`,
`acme relay` and one `acme notifier` as OS processes, offers 50 orders/s for 3 s, and must see
every order accepted and every e-mail received once, then write its JSON result and its plot.
No figure is asserted: this machine's speed is not the code's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.run import RunOptions, run_scenario, save_report

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_smoke_scenario_delivers_every_email_and_writes_its_results(tmp_path: Path) -> None:
    options = RunOptions(out_dir=tmp_path, quiet_timeout_s=0, command="pytest smoke")

    report = run_scenario("smoke", options)
    path = save_report(report, tmp_path, plot=True)

    saved = json.loads(path.read_text())
    assert saved["scenario"] == "smoke"
    assert saved["post"]["offered"] == 150
    assert saved["post"]["not_2xx"] == 0
    assert saved["e2e"]["orders_with_email"] == 150
    assert saved["e2e"]["missing"] == 0
    assert saved["e2e"]["duplicates"] == 0
    assert all(target["met"] for target in saved["targets"])
    # Per-second series and monitor samples made it into the file, with every process's CPU.
    assert saved["series"]["rows"]
    assert sum(row[saved["series"]["columns"].index("emails")] for row in saved["series"]["rows"])
    assert any("notifier-1" in sample.get("cores", {}) for sample in saved["samples"])
    assert {"api", "relay", "notifier-1", "sink"} <= saved["cpu"]["by_process"].keys()
    assert Path(saved["plot"]).stat().st_size > 10_000


def test_the_whole_path_leaves_nothing_per_order_in_redis(tmp_path: Path) -> None:
    """storage-smoke: 150 orders through the real processes, then 5 s of quiet: no publish-once
    key left, acknowledged entries trimmed, and the per-table figures written with a plot."""
    options = RunOptions(out_dir=tmp_path, quiet_timeout_s=0, command="pytest storage-smoke")

    report = run_scenario("storage-smoke", options)
    path = save_report(report, tmp_path, plot=True)

    saved = json.loads(path.read_text())
    after = saved["storage"]["after"]
    assert saved["e2e"]["missing"] == 0 and saved["e2e"]["duplicates"] == 0
    assert after["redis"]["publish_once_keys"] == 0, "a publish-once key outlived its e-mail"
    assert saved["storage"]["per_order"]["postgres_bytes_per_order"]["orders"] > 0
    assert all(target["met"] for target in saved["targets"]), saved["targets"]
    assert Path(saved["plot"]).stat().st_size > 10_000
