"""How the admin commands show things: rich tables for people, stable JSON for scripts.

Rendering only: every function takes data already gathered. JSON is the documented schema
(docs/runbook.md): snake_case keys, times ISO 8601 in UTC, ids as strings; one document per
command (`--watch` prints one compact document per line). Tables are for reading, not parsing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from rich.console import Console, Group, JustifyMethod
from rich.json import JSON
from rich.table import Table

from acme_cli.admin.actions import AuditRecord, Outcome
from acme_cli.admin.deadletters import DeadDetail, DeadEntry
from acme_cli.admin.health import Snapshot
from acme_cli.admin.trace import OrderTrace

__all__ = [
    "Output",
    "ago",
    "details",
    "render_dead_detail",
    "render_dead_list",
    "render_outcomes",
    "render_trace",
    "stats_view",
    "summary_line",
    "when",
]

_encoder = msgspec.json.Encoder(decimal_format="string")


class Output:
    """Where a command writes: stdout, as JSON or as rich text; problems go to stderr."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        # Piped output is read by grep and less, not an 80-column terminal: keep lines whole
        # (rich still honours COLUMNS when it is set).
        wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        self.console = Console(highlight=False, width=200 if wide else None)

    def json(self, document: Any, *, compact: bool = False) -> None:
        encoded = _encoder.encode(document)
        text = encoded if compact else msgspec.json.format(encoded, indent=2)
        sys.stdout.write(text.decode() + "\n")
        sys.stdout.flush()

    def say(self, text: str) -> None:
        self.console.print(text)

    def note(self, text: str) -> None:
        """A remark for the person at the terminal, kept off stdout so JSON stays clean."""
        print(text, file=sys.stderr)


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(0.0, (now - moment).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def details(detail: Any) -> str:
    """A timeline entry's detail as `key=value` pairs, empty ones left out."""
    if not isinstance(detail, dict):
        return "" if detail is None else str(detail)
    return "  ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, ""))


def _short(text: str, width: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _compact(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%m-%d %H:%M:%S")


def render_dead_list(
    out: Output,
    entries: Sequence[DeadEntry],
    total: int,
    next_before: str | None,
    now: datetime,
    *,
    in_archive: int | None = None,
) -> None:
    if not entries:
        held = (
            f"{total:,} in the dead stream"
            if in_archive is None
            else f"{total:,} in all, {in_archive:,} of them archived"
        )
        out.say(f"No dead letters to show ({held}).")
        return
    # Ids must never be cut (they are copied into the next command): on a narrow terminal,
    # columns go instead, and the error gives way last; `dead show` has everything.
    wide = out.console.width >= 180
    table = Table(
        title=f"Dead letters, newest first: {len(entries)} of {total:,}"
        + ("" if in_archive is None else f" ({in_archive:,} archived)")
        + " (times UTC)"
    )
    columns = ["dead id", "where", "order", "e-mail", "reason", "tries", "replays"]
    columns += ["first attempt", "dead at", "age"]
    if not wide:
        columns = ["dead id", "where", "order", "reason", "tries", "age"]
    rows = []
    for e in entries:
        cells = {
            "dead id": e.dead_id,
            "where": e.where,
            "order": e.order_id or "-",
            "e-mail": e.email or "-",
            "reason": e.reason_class,
            "tries": str(e.deliveries),
            "replays": str(e.replays),
            "first attempt": _compact(e.first_attempt_at),
            "dead at": _compact(e.dead_at),
            "age": ago(e.dead_at, now).removesuffix(" ago"),
        }
        rows.append([*(cells[c] for c in columns), _short(e.last_error or e.reason, 80)])
    for index, name in enumerate(columns):
        # min_width = the longest value: rich shrinks every column to fit, ids included.
        longest = max((len(row[index]) for row in rows), default=0)
        justify: JustifyMethod = "right" if name == "tries" else "left"
        table.add_column(name, no_wrap=True, min_width=max(longest, len(name)), justify=justify)
    table.add_column("last error", no_wrap=True, overflow="ellipsis", min_width=10)
    for row in rows:
        table.add_row(*row)
    out.console.print(table)
    if next_before:
        out.say(f"older entries: acme dead list --before {next_before}")


def _where(where: str, archived_at: datetime | None) -> str:
    if where == "archive":
        return f"archive (PostgreSQL notify.dead_letters, archived {when(archived_at)})"
    return "dead stream (Redis)"


def render_dead_detail(
    out: Output,
    detail: DeadDetail,
    order: dict[str, Any] | None,
    ledger: Any,
    audit: Sequence[AuditRecord],
    now: datetime,
) -> None:
    e = detail.entry
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    rows = [
        ("dead id", e.dead_id),
        ("where", _where(e.where, detail.archived_at)),
        ("original stream id", e.original_id),
        ("event id", e.event_id or "-"),
        ("order id", e.order_id or "-"),
        ("e-mail", e.email or "-"),
        ("reason", f"{e.reason_class}: {e.reason}"),
        ("last transient error", e.last_error or "-"),
        ("deliveries", f"{e.deliveries} (last consumer {e.consumer or '-'})"),
        ("replays so far", str(e.replays)),
        ("first attempt", when(e.first_attempt_at)),
        ("dead at", f"{when(e.dead_at)} ({ago(e.dead_at, now)})"),
        ("trace id", detail.trace_id or "-"),
        ("already e-mailed", "no" if ledger is None else f"yes, {ledger.message_id}"),
    ]
    for name, value in rows:
        facts.add_row(name, value)
    out.console.print(facts)
    out.say("\n[bold]Envelope[/bold]")
    if detail.envelope is None:
        out.say(f"(none: {detail.envelope_error})")
    else:
        out.console.print(JSON.from_data(detail.envelope, default=str))
    if order is not None:
        out.say(f"\n[bold]Order[/bold] status {order['status']}, {order['attempts']} attempt(s)")
        timeline = Table("at", "kind", "detail")
        timeline.columns[2].overflow = "fold"
        for step in order["timeline"]:
            timeline.add_row(when(step["at"]), step["kind"], details(step["detail"]))
        out.console.print(timeline)
    for record in audit:
        out.say(
            f"{when(record.at)} {record.action} by {record.who}"
            + (f": {record.why}" if record.why else "")
        )


_LABEL = {
    "replayed": "replayed",
    "would_replay": "would replay",
    "capped": "refused: over the replay cap",
    "not_found": "not found (gone meanwhile?)",
    "not_dead_letter": "refused: not a dead-letter entry",
    "empty": "refused: no original fields to replay",
    "purged": "purged",
    "would_purge": "would purge",
}


def summary_line(summary: dict[str, int]) -> str:
    """`{"replayed": 5, "capped": 1}` -> "5 replayed, 1 refused: over the replay cap"."""
    parts = [f"{n} {_LABEL.get(status, status)}" for status, n in summary.items()]
    return ", ".join(parts) or "nothing selected"


def render_outcomes(out: Output, title: str, outcomes: Sequence[Outcome], *, replay: bool) -> None:
    """One row per entry (the caller prints the counts)."""
    table = Table(title=title)
    columns = ["dead id", "order", "result"] + (["new stream id", "replays"] if replay else [])
    for name in columns:
        table.add_column(name, no_wrap=True)
    for o in outcomes:
        cells = [o.dead_id, o.order_id or "-", _LABEL.get(o.status, o.status)]
        table.add_row(*cells, *([o.new_id or "-", str(o.replays)] if replay else []))
    out.console.print(table)


# `acme stats` and `acme trace`: their JSON is the gathered structs themselves.


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f}h"
    return f"{seconds / 60:.1f}m" if seconds >= 60 else f"{seconds:.1f}s"


def _count(n: int, capped: bool = False) -> str:
    return f"{'≥' if capped else ''}{n:,}"


def _shards_table(s: Snapshot) -> Table:
    """One row per shard and their total: what each shard's notifiers and receipts owe."""
    table = Table(title=f"Shards at {when(s.at)} (events stream, notifier group)")
    columns = ("shard", "length", "lag", "pending", "oldest pending", "oldest unread", "dead")
    for name in (*columns, "receipts lag"):
        table.add_column(name, justify="left" if name == "shard" else "right")
    for row in [*s.shards, s.total]:
        table.add_row(
            "total" if row.shard is None else str(row.shard),
            f"{row.length:,}",
            _count(row.lag, row.lag_capped),
            f"{row.pending:,}",
            _age(row.oldest_pending_age_s),
            _age(row.oldest_unread_age_s),
            f"{row.dead:,}",
            _count(row.receipts_lag, row.receipts_lag_capped),
            end_section=row.shard == s.shards[-1].shard,
        )
    return table


def stats_view(s: Snapshot) -> Group:
    """The snapshot as tables (a renderable, so `--watch` can redraw it in place). With one
    shard, a row per stream and group; with several, a row per shard and their total."""
    streams = Table(title=f"Streams at {when(s.at)}")
    for name in ("stream", "length", "group", "lag", "pending", "oldest pending"):
        streams.add_column(name, justify="left" if name in ("stream", "group") else "right")
    consumers = Table(title="Consumers")
    for name in ("stream", "group", "consumer", "pending", "idle"):
        consumers.add_column(name, justify="right" if name in ("pending", "idle") else "left")
    for stream in s.streams:
        if not stream.groups:
            streams.add_row(stream.stream, f"{stream.length:,}", "(no group)", "-", "-", "-")
        for g in stream.groups:
            pending_age = _age(g.oldest_pending_age_s)
            streams.add_row(
                stream.stream,
                f"{stream.length:,}",
                g.name,
                _count(g.lag, g.lag_capped),
                f"{g.pending:,}",
                pending_age,
            )
            for c in g.consumers:
                idle = _age(c.idle_ms / 1000)
                consumers.add_row(stream.stream, g.name, c.name, f"{c.pending:,}", idle)
    other = Table.grid(padding=(0, 2))
    other.add_column(style="bold")
    other.add_column()
    dead = f"{s.dead.length:,}"
    if s.dead.length:
        dead += f" (newest {ago(s.dead.newest_at, s.at)}, oldest {ago(s.dead.oldest_at, s.at)})"
    o = s.outbox
    other.add_row("dead letters", dead)
    other.add_row("audit records", f"{s.audit_length:,}")
    other.add_row(
        "outbox unpublished", f"{o.unpublished:,} (oldest {_age(o.oldest_unpublished_s)})"
    )
    other.add_row(
        "outbox unconfirmed", f"{o.unconfirmed:,} (oldest {_age(o.oldest_unconfirmed_s)})"
    )
    other.add_row("e-mails sent, last minute", f"{s.sent_last_minute:,}")
    first = streams if len(s.shards) <= 1 else _shards_table(s)
    return Group(first, consumers, other)


def render_trace(out: Output, t: OrderTrace) -> None:
    out.say(f"[bold]Order {t.order_id}[/bold]  status [bold]{t.status}[/bold]")
    out.say(f"e-mail {t.email}   attempts {t.attempts}   trace id {t.trace_id or '-'}")
    steps = Table("at", "+s", "step", "from", "detail")
    steps.columns[4].overflow = "fold"
    for step in t.steps:
        offset = (step.at - t.created_at).total_seconds()
        steps.add_row(when(step.at), f"{offset:.3f}", step.kind, step.source, details(step.detail))
    out.console.print(steps)
    for entry in t.stream_entries:
        where = f" at {entry.consumer}, delivered {entry.deliveries}x" if entry.consumer else ""
        if entry.held_until is not None:
            where += f", held (recipient rate limit) until {when(entry.held_until)}"
        out.say(f"stream entry {entry.stream_id}: {entry.state}{where}")
    if t.outbox is not None:
        published = t.outbox.get("published_at")
        out.say(
            f"outbox: waiting for a receipt (published {t.outbox.get('publish_count', 0)}x,"
            f" first at {when(published)})"
            if published
            else "outbox: not published yet"
        )
    for note in t.notes:
        out.note(f"note: {note}")
