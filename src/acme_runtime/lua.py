"""Loads the project's Lua scripts from `lua/` once and runs them by SHA.

Scripts are real `.lua` files (reviewable, testable on their own). `Script.run` uses EVALSHA and
falls back to loading the script again when Redis answers NOSCRIPT (after a restart or a
SCRIPT FLUSH), so a Redis that lost its script cache never breaks a caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

__all__ = ["Script", "load_script", "lua_dir"]

_Arg = str | bytes | int | float


def lua_dir() -> Path:
    """The folder holding the .lua files: packaged beside this module, or the repository's."""
    packaged = Path(__file__).parent / "lua"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "lua"


class Script:
    """One Lua script, identified by the SHA1 of its source."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, redis: Redis, keys: Sequence[str], args: Sequence[_Arg]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)

    async def run_many(
        self,
        redis: Redis,
        calls: Sequence[tuple[Sequence[str], Sequence[_Arg]]],
        *,
        errors_as_replies: bool = False,
    ) -> list[Any]:
        """One pipeline of EVALSHA calls (keys, args), one reply each, in order. On NOSCRIPT
        the script is loaded and the whole pipeline runs again: the script must be idempotent
        (all of ours are), since calls before the failure may already have run.
        `errors_as_replies`: a call's error is its reply (an exception instance) instead of
        failing the lot, so the others' replies are not lost. One call goes without a pipeline."""
        if len(calls) == 1 and not errors_as_replies:
            return [await self.run(redis, *calls[0])]

        async def run_pipeline() -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    self.queue(pipe, keys, args)
                return await pipe.execute(raise_on_error=not errors_as_replies)

        try:
            replies = await run_pipeline()
        except NoScriptError:
            await self.ensure_loaded(redis)
            return await run_pipeline()
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self.ensure_loaded(redis)
            return await run_pipeline()
        return replies

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[_Arg]) -> None:
        """Adds an EVALSHA to a pipeline; call `ensure_loaded` before executing it."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def ensure_loaded(self, redis: Redis) -> None:
        exists = await redis.script_exists(self.sha)
        if not exists[0]:
            await redis.script_load(self.source)


@cache
def load_script(name: str) -> Script:
    """The script `lua/<name>.lua`, read from disk the first time it is asked for."""
    path = lua_dir() / f"{name}.lua"
    return Script(name, path.read_text(encoding="utf-8"))
