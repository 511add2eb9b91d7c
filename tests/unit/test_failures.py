"""Outages pass by themselves and are waited out; refusals come back every time and are not."""

from __future__ import annotations

import asyncpg
import pytest
from redis import exceptions as redis_errors

from acme_runtime.failures import is_outage, retry_outages


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        asyncpg.InterfaceError("pool is closed"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        redis_errors.ConnectionError("Connection refused"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
    ],
)
def test_failures_that_pass_by_themselves_are_outages(exc: BaseException) -> None:
    """Unreachable, restarting, failing over or overloaded storage is an outage."""
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
        asyncpg.DataError("value too long"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.UndefinedTableError("relation does not exist"),
        asyncpg.RaiseError("refused by a trigger"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key"),
        ValueError("badly formed hexadecimal UUID string"),
    ],
)
def test_failures_that_come_back_every_time_are_refusals(exc: BaseException) -> None:
    """A value, a constraint, a missing table or a script error is refused again next time."""
    assert not is_outage(exc)


async def test_an_outage_is_waited_out_within_the_patience() -> None:
    """Two outages, then an answer: the answer is returned."""
    answers: list[BaseException | str] = [TimeoutError(), TimeoutError(), "ok"]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await retry_outages(call, patience_s=5, first_delay_s=0.001) == "ok"


async def test_a_refusal_is_raised_at_once_and_an_endless_outage_after_the_patience() -> None:
    """A refusal is not retried; an outage outlasting the patience is raised."""
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.DataError("no")

    with pytest.raises(asyncpg.DataError):
        await retry_outages(refused, patience_s=5)
    assert calls == 1

    async def down() -> None:
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(ConnectionRefusedError):
        await retry_outages(down, patience_s=0.05, first_delay_s=0.01)
