"""The incident, end to end on real services: the relay's content filter rejects a batch with
554 5.6.0 (a misfiring rule: about these messages, so they are dead-lettered), the orders go
dead, the filter is fixed, `acme dead replay` puts them back, the notifier delivers them once,
the orders end `sent`, and `acme trace` shows the whole path. An event whose e-mail was sent
in the meantime is acknowledged without a second e-mail."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from acme_cli.smtp_sink import MailSink
from acme_notify.keys import AUDIT_STREAM
from acme_orders.settings import OrdersSettings
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP, RECEIPTS_STREAM
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.harness import (
    api_client,
    eventually,
    notify_settings,
    running_order_workers,
    running_replica,
)
from tests.integration.test_admin_dead import (
    CONTENT_REJECTED,
    admin_env,  # noqa: F401 - a fixture, used through `usefixtures`
    dead_fields,
    envelope,
)
from tests.integration.test_api import ORDER

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("admin_env")]


@pytest.fixture
async def api(orders_settings: OrdersSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with (
        api_client(orders_settings) as client,
        running_order_workers(orders_settings),
    ):
        yield client


async def acme_process(*argv: str) -> tuple[int, str, str]:
    """`acme ARGV...` as its own process, as an operator runs it: the services running in
    this test's process log to its stdout, which must not mix with the command's output."""
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "acme_cli.main", *argv],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def statuses(pool: asyncpg.Pool, order_ids: list[str]) -> list[str]:
    rows = await pool.fetch(
        "SELECT notification_status FROM orders WHERE id = ANY($1::uuid[]) ORDER BY id",
        order_ids,
    )
    return [r["notification_status"] for r in rows]


async def test_replayed_dead_letters_are_delivered_once_and_orders_end_sent(
    api: AsyncTestClient[Any],
    sink: MailSink,
    pool: asyncpg.Pool,
    redis: Redis,
    database_url: str,
    redis_url: str,
) -> None:
    """554 5.6.0 from a misfiring content filter -> dead; fixed -> replay -> one e-mail each,
    the orders turn sent, the audit trail names the operator, trace tells the story in order."""
    sink.policy = lambda _envelope: CONTENT_REJECTED
    settings = notify_settings(database_url, redis_url, sink.url)
    async with running_replica(settings):
        order_ids = sorted([(await api.post("/orders", json=ORDER)).json()["id"] for _ in range(3)])

        async def all_dead() -> bool:
            return await statuses(pool, order_ids) == ["dead"] * 3

        await eventually(all_dead, what="the 554s to be dead-lettered and their receipts applied")
        code, out, _ = await acme_process("dead", "list", "--reason", "smtp_permanent", "--json")
        assert code == 0 and sorted(e["order_id"] for e in json.loads(out)["entries"]) == order_ids

        sink.policy = None  # the content filter is fixed
        code, out, _ = await acme_process(
            "dead", "replay", "--reason", "smtp_permanent", "--yes", "--why", "rule fixed"
        )
        assert code == 0 and "3 replayed" in out
        messages = await sink.wait_for(3, timeout_s=15)

        async def all_sent() -> bool:
            return await statuses(pool, order_ids) == ["sent"] * 3

        await eventually(all_sent, what="the sent receipts of the replayed events")
    assert sorted(m.order_id or "" for m in messages) == order_ids and len(sink.messages) == 3
    assert await redis.xlen(DEAD_STREAM) == 0 and await redis.xlen(AUDIT_STREAM) == 3

    code, out, _ = await acme_process("trace", order_ids[0], "--json")
    assert code == 0
    trace = json.loads(out)
    assert trace["status"] == "sent" and "trace_id" in trace  # null: no tracer in tests
    kinds = [step["kind"] for step in trace["steps"]]
    assert kinds[:2] == ["created", "published"]
    assert kinds.index("dead") < kinds.index("replayed") < kinds.index("email_accepted")
    assert kinds.index("email_accepted") < kinds.index("sent")
    replayed = next(s for s in trace["steps"] if s["kind"] == "replayed")
    assert replayed["detail"]["who"] == "ops-tester@host-1"
    assert replayed["detail"]["why"] == "rule fixed"
    new_entry = trace["stream_entries"][-1]
    assert new_entry["stream_id"] == replayed["detail"]["new_stream_id"]
    # Acknowledged, and trimmed once the reaper's round comes (ACME_STREAM_RETENTION_MS = 0).
    assert new_entry["state"] in ("acknowledged", "gone")
    code, out, _ = await acme_process("trace", order_ids[0])
    assert code == 0 and "replayed" in out and "rule fixed" in out and "a***@example.com" in out


async def test_a_replayed_event_already_emailed_is_not_sent_again(
    sink: MailSink,
    pool: asyncpg.Pool,
    redis: Redis,
    database_url: str,
    redis_url: str,
) -> None:
    """The ledger has the event: the replayed entry is acknowledged with a `sent` receipt
    marked duplicate, and the SMTP server gets nothing."""
    event_id, order_id = str(uuid7()), str(uuid7())
    await pool.execute(
        "INSERT INTO notify.sent_ledger (event_id, order_id, message_id, smtp_reply, consumer,"
        " deliveries) VALUES ($1, $2, '<first@acme>', '250 OK', 'n1', 1)",
        uuid.UUID(event_id),
        uuid.UUID(order_id),
    )
    fields = dead_fields(
        event_id=event_id, order_id=order_id, data=envelope(event_id, order_id), dead_at_ms=now_ms()
    )
    dead_id = (await redis.xadd(DEAD_STREAM, fields)).decode()  # type: ignore[arg-type]
    async with running_replica(notify_settings(database_url, redis_url, sink.url)):
        assert (await acme_process("dead", "replay", dead_id))[0] == 0

        async def acknowledged() -> bool:
            summary: Any = await redis.xpending(EVENTS_STREAM, NOTIFIER_GROUP)
            return int(await redis.xlen(RECEIPTS_STREAM)) == 1 and summary["pending"] == 0

        await eventually(acknowledged, what="the replayed entry to be acknowledged")
    assert sink.messages == []
    [(_id, receipt)] = await redis.xrange(RECEIPTS_STREAM)
    assert receipt[b"type"] == b"sent" and receipt[b"reason_class"] == b"duplicate"
    assert receipt[b"detail"] == b"<first@acme>"
