"""Re-creates the incidents of docs/runbook.md on a real system and prints every command's output.

The runbook's examples are real output, re-creatable when the product changes: this starts the
system with tests/chaos/harness.py's `ChaosSystem` (embedded PostgreSQL and Redis, `acme api`,
`acme relay`, two notifiers, a steerable SMTP server and, for incident A, a real Postfix relay in
front of it), plays three incidents, and prints each command as `$ command` and its output:

* A, "The relay refuses us": a steady trickle of orders; the relay (Postfix) is misconfigured
  to answer `554 5.7.1 Relay access denied` for a while, then fixed. Nothing is dead-lettered;
  the mail is held and goes out by itself. Breaker timings are the production defaults.
* B, "A relay policy blocked one customer domain": the SMTP server refuses recipients at
  `@blocked.example` (`550 5.7.1 ... Recipient address rejected`); those are dead-lettered and,
  once the policy is lifted, replayed; then one straggler for the JSON examples.
* C, "The primary provider is down": a second recording SMTP server as the fallback provider
  (`ACME_SMTP_FALLBACK_URL`); a steady trickle of orders; the primary answers `421` to every
  connection for a while, then recovers. The mail goes through the fallback meanwhile and fails
  back once a probe of the primary passes. Breaker timings are the production defaults. One
  notifier's /metrics is scraped every second from the outage to just after the failback, and
  printed (`acme_notify_fallback_active_seconds` growing through the whole outage).

`acme` runs as a subprocess as `maria@ops-bastion`, `COLUMNS=140`. Incident A needs Postfix, and
root (for Postfix). About three minutes for all three (`--incident C` alone: about a minute), in
a temporary folder removed at the end unless `--keep` (logs).

Usage: ``.tox/py311/bin/python bench/runbook_capture.py [--incident A|B|C|all] > /tmp/runbook.txt``
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: make `bench.*` and `tests.*` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import unicodedata
import urllib.request
import uuid
from datetime import datetime

from tests.chaos.client import post_order
from tests.chaos.harness import ChaosSystem, until

from bench.stack import HOST

#: The production breaker timings (the chaos defaults are much shorter).
BREAKER_DEFAULTS = {"ACME_BREAKER_COOLDOWN_S": "5", "ACME_BREAKER_MAX_COOLDOWN_S": "30"}
BLOCKED_REPLY = "550 5.7.1 <{address}>: Recipient address rejected: Access denied"
WHY = "INC-2291: policy for blocked.example lifted"
#: Incident C: seconds of orders before the primary goes down, of the outage, and after it.
PRIMARY_DOWN_S = (5.0, 25.0, 30.0)
#: Incident C's shell commands (run with bash in the system's folder), one line each.
FIRST_PRIMARY_OPENED = """
grep -h '"smtp_circuit_opened"' logs/notifier-*.log
| jq -s 'map(select(.provider == "primary")) | min_by(.timestamp)'
"""
#: The breakers' failovers, failed probes and failbacks so far, both replicas, in time order.
BREAKER_EVENTS = """
grep -hE '"smtp_circuit_(opened|closed|released_by_peer)"' logs/notifier-*.log
| jq -c '[.timestamp, .event, .provider]' | sort
"""
PROVIDER_METRICS = """
curl -s http://127.0.0.1:{port}/metrics
| grep -E '^acme_notify_(provider_sends_total|provider_circuit_state|circuit_state|fallback_)'
"""
#: Every breaker change of each notifier, one compact line each.
BREAKER_TIMELINE = """
for f in logs/notifier-*.log; do echo "== $f";
grep -hE '"smtp_circuit_(opened|closed|released_by_peer)"' "$f"
| jq -c '{timestamp, event, provider, cooldown_s, down_for_s, peer} | del(.[] | nulls)'; done
"""
# fmt: off
NAMES = ("Carla Dias", "Ana Souza", "Bruno Lima", "Davi Rocha", "Elisa Melo", "Fábio Costa",
         "Gabi Nunes", "Heitor Reis", "Iara Lopes", "João Pires", "Kátia Alves", "Luís Prado")
# fmt: on


def heading(text: str) -> None:
    print(f"\n{'=' * 100}\n== {text}\n{'=' * 100}", flush=True)


def note(text: str) -> None:
    print(f"# {time.strftime('%H:%M:%S', time.gmtime())}Z {text}", flush=True)


def clock(at: float) -> str:
    """Unix seconds as the time of day, to the hundredth: `03:08:10.42Z`."""
    return f"{time.strftime('%H:%M:%S', time.gmtime(at))}.{int(at % 1 * 100):02d}Z"


def tidy(output: bytes) -> str:
    """The output without the trailing blanks rich pads its lines with."""
    return "\n".join(line.rstrip() for line in output.decode().rstrip().splitlines())


def shown(args: tuple[str, ...]) -> str:
    return " ".join(f'"{a}"' if " " in a else a for a in args)


class Operator:
    """Runs `acme` commands (and a few shell pipelines) as an operator would, printing them."""

    def __init__(self, system: ChaosSystem) -> None:
        self.system = system
        self.env = {
            **os.environ,
            "ACME_REDIS_URL": system.stack.redis_url,
            "ACME_DATABASE_URL": system.stack.database_url,
            "ACME_OPERATOR": "maria@ops-bastion",
            "COLUMNS": "140",
        }

    async def acme(self, *args: str, show: bool = True, stdin_note: str = "") -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "acme_cli.main", *args, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output = tidy((await process.communicate())[0])
        if show:
            print(f"$ acme {shown(args)}{stdin_note}\n{output}", flush=True)
        return int(process.returncode or 0), output

    async def pipeline(self, display: str, *stages: list[str]) -> str:
        """Runs the stages as a pipe (each one's stdout the next one's stdin) in the system's
        folder; prints `display` and the last stage's output."""

        def run() -> str:
            data = b""
            for argv in stages:
                done = subprocess.run(argv, input=data, capture_output=True, cwd=self.system.root,
                                      check=False, timeout=30)  # fmt: skip
                data = done.stdout
            return tidy(data)

        output = await asyncio.to_thread(run)
        print(f"$ {display}\n{output}", flush=True)
        return output

    async def shell(self, command: str) -> str:
        """Runs `command` with bash in the system's folder; prints it and its output. The
        command may be written on several lines: they are joined with single spaces."""
        command = " ".join(command.split())
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", command], capture_output=True, cwd=self.system.root,
            check=False, timeout=30,
        )  # fmt: skip
        output = tidy(done.stdout)
        print(f"$ {command}\n{output}", flush=True)
        return output

    async def dead_ids(self) -> list[tuple[str, str]]:
        """(dead id, order id) of every dead letter, oldest first."""
        _code, output = await self.acme("dead", "list", "--limit", "1000", "--json", show=False)
        entries = json.loads(output)["entries"]
        return [(e["dead_id"], e["order_id"]) for e in reversed(entries)]


async def place(system: ChaosSystem, index: int, email: str) -> tuple[str, float]:
    """One order for `email`; its id and created_at (Unix seconds)."""
    body = {
        "customer": {"name": NAMES[index % len(NAMES)], "email": email, "locale": "pt-BR"},
        "items": [{"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}],
        "currency": "BRL",
    }
    key = f"runbook-{uuid.uuid4()}"
    status, _headers, payload = await post_order(
        HOST, system.stack.http_port, json.dumps(body).encode(), key, api_key=system.stack.api_key
    )
    assert status == 201, (status, payload)
    document = json.loads(payload)
    return str(document["id"]), datetime.fromisoformat(document["created_at"]).timestamp()


async def trickle(
    system: ChaosSystem, orders: list[tuple[str, float]], rate_per_s: float, duration_s: float
) -> None:
    """Places `rate_per_s` orders a second for `duration_s`, appending (id, created_at)."""
    t0 = time.monotonic()
    for i in range(round(rate_per_s * duration_s)):
        await asyncio.sleep(max(0.0, t0 + i / rate_per_s - time.monotonic()))
        orders.append(await place(system, i, f"cliente{i:03d}@example.com"))


async def wait_settled(system: ChaosSystem, expected: int, timeout_s: float) -> None:
    """Until `expected` orders exist and none waits for its e-mail (each is sent or dead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded: one look per 200 ms
        rows = await system.db_fetch(
            "SELECT count(*) AS total, count(*) FILTER (WHERE notification_status"
            " IN ('pending', 'published')) AS open FROM orders"
        )
        if rows[0]["total"] >= expected and rows[0]["open"] == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"orders still waiting after {timeout_s:g} s")


def metrics_port(system: ChaosSystem, slot: int) -> str:
    """The notifier's metrics port, from its environment (the harness picks a free one)."""
    return system.slots[slot].env["ACME_METRICS_PORT"]


def scrape(port: str) -> dict[str, float]:
    """One notifier's /metrics as {series: value} (comments left out)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return {series: float(value) for series, value in pairs}


async def sample_metrics(port: str, samples: list[tuple[float, dict[str, float]]]) -> None:
    """Scrapes a notifier's /metrics once a second until cancelled, as Prometheus would,
    appending (Unix seconds, series)."""
    while True:
        at = time.time()
        samples.append((at, await asyncio.to_thread(scrape, port)))
        await asyncio.sleep(max(0.0, at + 1.0 - time.time()))


def print_samples(
    samples: list[tuple[float, dict[str, float]]], down_at: float, up_at: float
) -> None:
    """One line per scrape: when (and seconds since the primary went down), the primary's
    breaker, and the fallback gauges; then the peak of `acme_notify_fallback_active_seconds`."""
    nan = float("nan")
    breaker = 'acme_notify_provider_circuit_state{provider="primary"}'
    note(f"notifier-1's /metrics, scraped each second (primary back at +{up_at - down_at:.1f} s)")
    for at, sample in samples:
        active = sample.get("acme_notify_fallback_active_seconds", nan)
        overdue = sample.get("acme_notify_fallback_overdue", nan)
        print(
            f"#   {clock(at)} +{at - down_at:4.1f} s  primary breaker {sample.get(breaker, nan):g}"
            f"  fallback_active_seconds {active:5.1f}  fallback_overdue {overdue:g}",
            flush=True,
        )
    if samples:
        at, peak = max(
            ((at, s.get("acme_notify_fallback_active_seconds", 0.0)) for at, s in samples),
            key=lambda pair: pair[1],
        )
        note(
            f"peak acme_notify_fallback_active_seconds {peak:.1f} s at {clock(at)} "
            f"(+{at - down_at:.1f} s after the primary went down, +{at - up_at:.1f} s after it "
            "came back)"
        )


async def relay_refuses_us(root: Path) -> None:
    heading("Incident A: the relay refuses us (Postfix: 554 5.7.1 Relay access denied)")
    system = ChaosSystem(root / "relay-refuses-us", notifiers=2, mta=True, env=BREAKER_DEFAULTS)
    try:
        await system.start()
        ops = Operator(system)
        orders: list[tuple[str, float]] = []
        load = asyncio.create_task(trickle(system, orders, 3.0, 40.0))
        await asyncio.sleep(5.0)
        await system.misconfigure_relay()
        broken_at = time.time()
        note(f"relay misconfigured; {len(orders)} orders so far")
        await asyncio.sleep(15.0)
        await ops.acme("stats")
        logs = sorted(f"logs/{child.log_path.name}" for child in system.slots.values())
        opened = ["grep", "-h", '"smtp_circuit_opened"', *logs]
        where = "'\"smtp_circuit_opened\"' logs/notifier-*.log"
        first = "jq -s 'min_by(.timestamp)'"
        await ops.pipeline(f"grep -h {where} | {first}", opened, ["jq", "-s", "min_by(.timestamp)"])
        await ops.pipeline(
            "grep -h send_failed_transient logs/notifier-*.log | grep -m1 smtp_provider | jq .",
            ["grep", "-h", "send_failed_transient", *logs], ["grep", "-m1", "smtp_provider"],
            ["jq", "."],
        )  # fmt: skip
        port = metrics_port(system, 1)
        await ops.pipeline(
            f"curl -s http://127.0.0.1:{port}/metrics | grep -E '^acme_notify_(send_failures_total"
            "|circuit_state|dead_lettered_total)'",
            ["curl", "-s", f"http://127.0.0.1:{port}/metrics"],
            ["grep", "-E", "^acme_notify_(send_failures_total|circuit_state|dead_lettered_total)"],
        )
        await ops.acme("dead", "list")
        during = [uuid.UUID(o) for o, at in orders if at > broken_at]
        rows = await system.db_fetch(
            "SELECT order_id::text AS id FROM order_timeline WHERE kind = 'attempt_failed'"
            " AND order_id = ANY($1::uuid[]) GROUP BY order_id ORDER BY count(*) DESC, min(at)"
            " LIMIT 1",
            during,
        )
        traced = rows[0]["id"] if rows else str(during[0])
        await ops.acme("trace", traced)
        await system.fix_relay()
        fixed_at = time.time()
        note(f"relay fixed, {fixed_at - broken_at:.1f} s after")
        await load
        await wait_settled(system, len(orders), 120.0)
        await ops.acme("stats")
        await ops.acme("trace", traced)
        await ops.pipeline(
            f"grep -h {where} | jq -c '[.timestamp, .cooldown_s]' | sort",
            opened, ["jq", "-c", "[.timestamp, .cooldown_s]"], ["sort"],
        )  # fmt: skip
        sent = await system.db_fetch(
            "SELECT order_id::text AS id, extract(epoch FROM sent_at) AS at FROM notify.sent_ledger"
        )
        sent_at = {row["id"]: float(row["at"]) for row in sent}
        created = dict(orders)
        held = [o for o, at in created.items() if at < fixed_at and sent_at.get(o, 0) > fixed_at]
        refusals = sum(
            b"smtp_provider" in line and b"send_failed_transient" in line
            for child in system.slots.values()
            for line in child.log_path.read_bytes().splitlines()
        )
        note(
            f"figures: misconfigured {fixed_at - broken_at:.1f} s; {len(orders)} orders, "
            f"{sum(1 for at in created.values() if broken_at <= at < fixed_at)} placed while "
            f"misconfigured; {len(held)} held until the fix, the last one out "
            f"{max((sent_at[o] for o in held), default=fixed_at) - fixed_at:.1f} s after it; "
            f"{refusals} smtp_provider refusals logged; "
            f"{sum(o not in sent_at for o in created)} orders without an e-mail"
        )
    finally:
        await system.stop()


async def blocked_domain(root: Path) -> None:
    heading("Incident B: a relay policy blocked one customer domain (550 5.7.1 per recipient)")
    system = ChaosSystem(root / "blocked-domain", notifiers=2)
    try:
        await system.start()
        ops = Operator(system)
        await system.set_smtp(reject_rcpt=r"@blocked\.example$", reject_reply=BLOCKED_REPLY)
        note("the relay refuses recipients at @blocked.example")
        domains = ("example.com", "blocked.example", "example.org")
        for i in range(12):
            name = unicodedata.normalize("NFKD", NAMES[i]).encode("ascii", "ignore").decode()
            await place(system, i, f"{name.split()[0].lower()}@{domains[i % 3]}")
            await asyncio.sleep(0.3)
        await wait_settled(system, 12, 60.0)
        await ops.acme("stats")
        await ops.acme("dead", "list", "--reason", "smtp_permanent", "--since", "1h")
        dead_id, order_id = (await ops.dead_ids())[0]
        await ops.acme("dead", "show", dead_id)
        await system.set_smtp()
        note("the relay admin lifted the policy")
        replay = ("dead", "replay", "--reason", "smtp_permanent", "--since", "1h")
        await ops.acme(*replay, "--dry-run")
        code, _ = await ops.acme(*replay, stdin_note=" < /dev/null")
        print(f"$ echo $?\n{code}")
        await ops.acme(*replay, "--yes", "--why", WHY)
        await wait_settled(system, 12, 60.0)
        await ops.acme("trace", order_id)
        await ops.acme("stats")

        heading("Incident B, JSON examples: one straggler, replayed by id")
        await system.set_smtp(reject_rcpt=r"@blocked\.example$", reject_reply=BLOCKED_REPLY)
        straggler, _at = await place(system, 1, "ana@blocked.example")
        await wait_settled(system, 13, 60.0)
        await system.set_smtp()
        await ops.acme("dead", "list", "--limit", "1", "--json")
        dead_id = next(d for d, o in await ops.dead_ids() if o == straggler)
        await ops.acme("dead", "replay", dead_id, "--why", "INC-2291 straggler", "--json")
        await wait_settled(system, 13, 60.0)
        await ops.acme("trace", straggler, "--json")
        await ops.acme("stats", "--json")
    finally:
        await system.stop()


async def primary_down(root: Path) -> None:
    heading("Incident C: the primary provider is down (421 to every connection), a fallback")
    system = ChaosSystem(root / "primary-down", notifiers=2, fallback=True, env=BREAKER_DEFAULTS)
    try:
        await system.start()
        ops = Operator(system)
        orders: list[tuple[str, float]] = []
        load = asyncio.create_task(trickle(system, orders, 3.0, sum(PRIMARY_DOWN_S)))
        lead_s, outage_s, _after_s = PRIMARY_DOWN_S
        await asyncio.sleep(lead_s)
        await system.set_smtp(mode="greet421")
        down_at = time.time()
        note(
            f"the primary answers 421 to every connection from {clock(down_at)}; "
            f"{len(orders)} orders so far"
        )
        port = metrics_port(system, 1)
        samples: list[tuple[float, dict[str, float]]] = []
        sampler = asyncio.create_task(sample_metrics(port, samples))
        await asyncio.sleep(15.0)
        await ops.acme("stats")
        await ops.shell(FIRST_PRIMARY_OPENED)
        await ops.shell(BREAKER_EVENTS)
        await ops.shell(PROVIDER_METRICS.format(port=port))
        during, during_at = next((o, at) for o, at in orders if at >= down_at)
        note(f"the first order placed since, {during_at - down_at:.2f} s after:")
        await ops.acme("trace", during)

        await asyncio.sleep(max(0.0, down_at + outage_s - time.time()))
        await system.set_smtp(mode="up")
        up_at = time.time()
        note(f"the primary is back at {clock(up_at)}, {up_at - down_at:.1f} s after it went down")

        def back_on_primary() -> bool:
            system.primary_mail.poll()
            return any(at >= up_at for at in system.primary_mail.first_at.values())

        await until(back_on_primary, 60.0, "an e-mail on the primary again")
        back_at = min(at for at in system.primary_mail.first_at.values() if at >= up_at)
        note(
            f"first e-mail back on the primary at {clock(back_at)}, {back_at - up_at:.1f} s after "
            "its recovery"
        )
        await asyncio.sleep(3.0)
        sampler.cancel()
        print_samples(samples, down_at, up_at)
        await ops.shell(BREAKER_TIMELINE)
        await load
        await wait_settled(system, len(orders), 60.0)
        system.mail.poll()
        primary, fallback = system.primary_mail.first_at, system.fallback_mail.first_at
        after = next(o for o, at in orders if at > back_at + 1.0 and o in primary)
        await ops.acme("trace", after)
        await ops.shell(PROVIDER_METRICS.format(port=port))

        first = system.mail.first_at
        outage = sorted(first[o] - at for o, at in orders if down_at <= at < up_at and o in first)
        dead = await system.db_fetch("SELECT count(*) AS n FROM orders"
                                     " WHERE notification_status = 'dead'")  # fmt: skip
        refused = sum(f["fault"] == "greet421" for f in system.smtp.injected())
        gauges = {
            name: max(sample.get(f"acme_notify_{name}", float("nan")) for _at, sample in samples)
            for name in ("fallback_active_seconds", "fallback_overdue", "circuit_state")
        }
        note(
            f"figures: primary down {up_at - down_at:.1f} s; {len(orders)} orders, "
            f"{sum(o in primary for o, _ in orders)} e-mailed by the primary and "
            f"{sum(o in fallback for o, _ in orders)} by the fallback "
            f"({sum(system.mail.copies.values())} e-mails received in all, "
            f"{sum(o not in first for o, _ in orders)} orders without one, "
            f"{dead[0]['n']} dead); {len(outage)} placed during the outage, "
            f"e2e max {max(outage, default=float('nan')):.3f} s, "
            f"median {outage[len(outage) // 2] if outage else float('nan'):.3f} s; "
            f"first e-mail back on the primary {back_at - up_at:.1f} s after its recovery; "
            f"{refused} connections refused by the primary (421); notifier-1's gauges, scraped "
            f"each second from the outage to 3 s after the failback ({len(samples)} scrapes), "
            "at most: " + ", ".join(f"{name} {value:g}" for name, value in gauges.items())
        )
    finally:
        await system.stop()


INCIDENTS = {"A": relay_refuses_us, "B": blocked_domain, "C": primary_down}


async def main(keep: bool, incident: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="acme-runbook-"))
    note(f"system folders under {root}")
    try:
        for name, play in INCIDENTS.items():
            if incident in (name, "all"):
                await play(root)
    finally:
        if keep:
            note(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs) at the end")
    parser.add_argument("--incident", choices=[*INCIDENTS, "all"], default="all",
                        help="play one incident only (default: all)")  # fmt: skip
    arguments = parser.parse_args()
    asyncio.run(main(arguments.keep, arguments.incident))
