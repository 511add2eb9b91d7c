"""Where the CPU went: the CPU time of process trees, read with psutil, and its tables.

A benchmark takes a `snapshot` of the trees it cares about (each service, PostgreSQL with its
backends, Redis, this process) before and after a window; `cpu_table` turns two snapshots into
CPU seconds and CPU-ms per order of each, next to what the whole machine spent (other people's
work shares our cores). `user_system_s` splits it into user and kernel time, `process_cpu_s`
reads single processes (PostgreSQL's backends, attributed to their clients by the caller).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import psutil

__all__ = [
    "OUTSIDE_THE_SYSTEM",
    "CpuSnapshot",
    "cpu_table",
    "embedded_servers",
    "format_cpu_table",
    "postgres_split",
    "process_cpu_s",
    "snapshot",
    "user_system_s",
    "user_system_split",
]


#: Processes that stand in for the world outside the system (its clients, the e-mail provider,
#: the benchmark harness): left out of the system's CPU, as issue 16 counts it.
OUTSIDE_THE_SYSTEM: Final = frozenset({"generator", "bench", "sink"})


class _Times(NamedTuple):
    ppid: int
    #: Its own threads' CPU seconds...
    user_s: float
    system_s: float
    #: ...and those of the children it has reaped (a PostgreSQL backend that ended).
    children_user_s: float
    children_system_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s + self.children_user_s + self.children_system_s


def _process_table() -> dict[int, _Times]:
    """Every process's parent and CPU times, in one pass over the machine's processes."""
    table = {}
    for process in psutil.process_iter(["ppid", "cpu_times"]):
        ppid, times = process.info["ppid"], process.info["cpu_times"]
        if ppid is not None and times is not None:  # None: not ours to read
            table[process.pid] = _Times(
                ppid, times.user, times.system, times.children_user, times.children_system
            )
    return table


def _tree(table: dict[int, _Times], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, times in table.items():
        children.setdefault(times.ppid, []).append(pid)
    members, frontier = [], [root] if root in table else []
    # Bounded by the number of processes: each pid is visited at most once.
    seen: set[int] = set()
    while frontier and len(seen) <= len(table):
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        members.append(pid)
        frontier.extend(children.get(pid, ()))
    return members


@dataclass
class CpuSnapshot:
    at_s: float
    by_name: dict[str, float]
    processes: dict[str, int]
    machine_busy_s: float


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent (all cores)."""
    t = psutil.cpu_times()
    # Guest time is already inside user and nice; idle and iowait are not work.
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def snapshot(roots: dict[str, int], self_name: str = "generator") -> CpuSnapshot:
    """CPU seconds so far of each root's process tree, and of this process as `self_name`.

    A tree counts the CPU of every live member plus what its members reaped: a PostgreSQL
    backend that exits during the window still counts, through its parent.
    """
    table = _process_table()
    by_name: dict[str, float] = {}
    processes: dict[str, int] = {}
    for name, pid in roots.items():
        members = _tree(table, pid)
        by_name[name] = sum(table[m].total_s for m in members)
        processes[name] = len(members)
    # Only this process's own threads: children it reaped (pg_isready at start-up) are not load.
    own = psutil.Process().cpu_times()
    by_name[self_name], processes[self_name] = own.user + own.system, 1
    return CpuSnapshot(time.monotonic(), by_name, processes, _machine_busy_s())


def user_system_s(roots: dict[str, int]) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds so far of each root's process tree (like `snapshot`, split:
    the system part is time in the kernel, for a service mostly its socket system calls)."""
    table = _process_table()
    out = {}
    for name, pid in roots.items():
        members = _tree(table, pid)
        if members:
            user = sum(table[m].user_s + table[m].children_user_s for m in members)
            system = sum(table[m].system_s + table[m].children_system_s for m in members)
            out[name] = (user, system)
    return out


def process_cpu_s(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process (its own threads, not reaped children)."""
    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def embedded_servers() -> dict[str, int]:
    """The pids of the embedded PostgreSQL and Redis: children of this process (forked by
    acme_cli.embedded's spawner thread)."""
    pids = {}
    for child in psutil.Process().children():
        try:
            name = child.name()
        except psutil.Error:
            continue
        if name == "postgres":
            pids["postgres"] = child.pid
        elif name.startswith("redis-server"):
            pids["redis"] = child.pid
    return pids


# --- tables --------------------------------------------------------------------------------


def cpu_table(before: CpuSnapshot, after: CpuSnapshot, units: int, unit: str = "order"
              ) -> dict[str, Any]:  # fmt: skip
    """CPU each tracked process spent between two snapshots, in total and per `unit`."""
    window_s = max(1e-9, after.at_s - before.at_s)
    per = max(1, units)
    rows: dict[str, Any] = {}
    for name, after_s in after.by_name.items():
        used_s = max(0.0, after_s - before.by_name.get(name, after_s))
        rows[name] = {
            "cpu_s": round(used_s, 3),
            f"cpu_ms_per_{unit}": round(used_s * 1000 / per, 4),
            "share_of_one_core": round(used_s / window_s, 3),
            "processes": after.processes.get(name, 0),
        }
    tracked_s = sum(r["cpu_s"] for r in rows.values())
    machine_s = after.machine_busy_s - before.machine_busy_s
    return {
        "window_s": round(window_s, 3),
        f"{unit}s": units,
        "unit": unit,
        "by_process": rows,
        "tracked_total_s": round(tracked_s, 3),
        f"tracked_ms_per_{unit}": round(tracked_s * 1000 / per, 4),
        "machine_busy_s": round(machine_s, 3),
        # Other engineers' test runs, the kernel, anything not ours: it shares our cores.
        "other_processes_s": round(max(0.0, machine_s - tracked_s), 3),
    }


def format_cpu_table(cpu: dict[str, Any], cores: int) -> list[str]:
    """The CPU table as aligned text lines."""
    unit = cpu["unit"]
    per = f"CPU-ms/{unit}"
    lines = [
        f"CPU during the measured window ({cpu['window_s']:.1f} s, {cpu[unit + 's']} {unit}s):",
        f"  {'process':<15}{'CPU-s':>8}{per:>16}{'of 1 core':>11}",
    ]
    for name, row in cpu["by_process"].items():
        label = f"{name} ({row['processes']})" if row["processes"] > 1 else name
        lines.append(
            f"  {label:<15}{row['cpu_s']:>8.2f}{row[f'cpu_ms_per_{unit}']:>16.3f}"
            f"{row['share_of_one_core']:>11.0%}"
        )
    lines.append(
        f"  {'ours total':<15}{cpu['tracked_total_s']:>8.2f}{cpu[f'tracked_ms_per_{unit}']:>16.3f}"
    )
    lines.append(
        f"  machine busy {cpu['machine_busy_s']:.2f} CPU-s of {cpu['window_s'] * cores:.1f} "
        f"available; other processes {cpu['other_processes_s']:.2f} CPU-s"
    )
    return lines


def user_system_split(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """Per process: CPU seconds in user space and in the kernel (system calls: sockets, files)
    between two readings, and the kernel's share."""
    out = {}
    for name, (user, system) in after.items():
        user -= before.get(name, (user, system))[0]
        system -= before.get(name, (user, system))[1]
        total = max(1e-9, user + system)
        out[name] = {
            "user_s": round(user, 2),
            "system_s": round(system, 2),
            "system_share": round(system / total, 3),
        }
    return out


def postgres_split(
    labels: dict[int, str],
    before: dict[int, float],
    after: dict[int, float],
    total_s: float,
    units: int,
) -> dict[str, dict[str, float]]:
    """PostgreSQL's CPU in a window by who it served, per order; the rest (background workers,
    sessions that ended in the window) as "other"."""
    by_label: dict[str, float] = {}
    for pid, label in labels.items():
        if pid in before and pid in after:
            by_label[label] = by_label.get(label, 0.0) + after[pid] - before[pid]
    by_label["other (background, ended sessions)"] = max(0.0, total_s - sum(by_label.values()))
    return {
        label: {"cpu_s": round(used, 2), "cpu_ms_per_order": round(used * 1000 / max(1, units), 3)}
        for label, used in sorted(by_label.items(), key=lambda kv: -kv[1])
    }
